// vaultgate example client in Go (grpc-go, protoc-gen-go, protoc-gen-go-grpc).
//
// Does what the Python and Node examples do against a running `vaultgate dev`: health of ""
// and the three services, Encrypt/Decrypt, EncryptBatch then DecryptBatch, GetSecret, GetDbCreds
// then RevokeLease as `billing`, and the refusals. Every call goes through a channel configured
// with proto/vaultgate/v1/service_config.json (retries of UNAVAILABLE and RESOURCE_EXHAUSTED on
// idempotent RPCs, per-method timeouts). Exits 0 when every check passes, 1 on the first wrong
// answer, 2 on a usage error.
//
// Build and run with examples/go/run.sh (an offline GOPATH build against Debian's
// /usr/share/gocode): bash examples/go/run.sh --addr 127.0.0.1:50051 --dir .dev
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io/ioutil"
	"os"
	"path/filepath"
	"strings"
	"time"

	vaultgatev1 "github.com/vaultgate/vaultgate/gen/go/vaultgate/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

const timeout = 10 * time.Second // the deadline of every call

type checkFailed struct{ what string }

func (c checkFailed) Error() string { return c.what }

// check fails with what (a claim, then ": got ..." detail) unless cond; prints the claim when it holds.
func check(cond bool, what string) {
	if !cond {
		panic(checkFailed{what})
	}
	claim := strings.SplitN(strings.SplitN(what, ": got ", 2)[0], ": expected ", 2)[0]
	fmt.Printf("  ok  %s\n", claim)
}

func must(err error, what string) {
	if err != nil {
		panic(checkFailed{fmt.Sprintf("%s: %s: %s", what, status.Code(err), status.Convert(err).Message())})
	}
}

func as(jwt string) context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+jwt)
}

func call(parent context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(parent, timeout)
}

func expectCode(err error, code codes.Code, what string) {
	if err == nil {
		panic(checkFailed{fmt.Sprintf("%s: expected %s, but the call succeeded", what, code)})
	}
	got := status.Code(err)
	check(got == code, fmt.Sprintf("%s: expected %s, got %s: %s", what, code, got, status.Convert(err).Message()))
}

func readJWT(dir, name string) string {
	b, err := ioutil.ReadFile(filepath.Join(dir, "callers", name+".jwt"))
	must(err, "read "+name+".jwt")
	return strings.TrimSpace(string(b))
}

func run(addr, dir, serviceConfig string) {
	billing, reports := as(readJWT(dir, "billing")), as(readJWT(dir, "reports"))
	dial, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	conn, err := grpc.DialContext(dial, addr, grpc.WithInsecure(), grpc.WithBlock(),
		grpc.WithDefaultServiceConfig(serviceConfig))
	if err != nil {
		panic(checkFailed{fmt.Sprintf("cannot connect to %s within %s (is `vaultgate dev` running?): %v", addr, timeout, err)})
	}
	defer conn.Close()

	// Standard health-check client (grpc.health.v1), no credentials.
	health := healthpb.NewHealthClient(conn)
	for _, service := range []string{"", "vaultgate.v1.EncryptionService", "vaultgate.v1.SecretService", "vaultgate.v1.DatabaseService"} {
		ctx, done := call(context.Background())
		r, err := health.Check(ctx, &healthpb.HealthCheckRequest{Service: service})
		done()
		must(err, "health "+service)
		name := service
		if name == "" {
			name = "(server)"
		}
		check(r.Status == healthpb.HealthCheckResponse_SERVING, fmt.Sprintf("health %s is SERVING: got %s", name, r.Status))
	}

	// Encrypt / Decrypt round trip.
	crypto := vaultgatev1.NewEncryptionServiceClient(conn)
	ctx, done := call(billing)
	defer done()
	e, err := crypto.Encrypt(ctx, &vaultgatev1.EncryptRequest{Key: "billing", Plaintext: []byte("hello")})
	must(err, "Encrypt")
	check(strings.HasPrefix(e.Ciphertext, "vault:v") && e.KeyVersion >= 1,
		fmt.Sprintf("Encrypt returns a vault:vN: ciphertext: got %q, key_version %d", e.Ciphertext, e.KeyVersion))
	d, err := crypto.Decrypt(ctx, &vaultgatev1.DecryptRequest{Key: "billing", Ciphertext: e.Ciphertext})
	must(err, "Decrypt")
	check(string(d.Plaintext) == "hello" && d.KeyVersion == e.KeyVersion,
		fmt.Sprintf("Decrypt returns the plaintext: got %q, key_version %d", d.Plaintext, d.KeyVersion))

	// EncryptBatch, then DecryptBatch of its results.
	all := make([]byte, 256)
	for i := range all {
		all[i] = byte(i)
	}
	plaintexts := [][]byte{[]byte("alpha"), {}, all}
	items := make([]*vaultgatev1.EncryptBatchItem, len(plaintexts))
	for i, p := range plaintexts {
		items[i] = &vaultgatev1.EncryptBatchItem{Plaintext: p}
	}
	b, err := crypto.EncryptBatch(ctx, &vaultgatev1.EncryptBatchRequest{Key: "billing", Items: items})
	must(err, "EncryptBatch")
	check(len(b.Results) == len(plaintexts), fmt.Sprintf("EncryptBatch answers every item: got %d results", len(b.Results)))
	back := make([]*vaultgatev1.DecryptBatchItem, len(b.Results))
	for i, r := range b.Results {
		check(r.Error == nil && strings.HasPrefix(r.Ciphertext, "vault:v"),
			fmt.Sprintf("EncryptBatch item %d succeeded: got error %v, ciphertext %q", i, r.Error, r.Ciphertext))
		back[i] = &vaultgatev1.DecryptBatchItem{Ciphertext: r.Ciphertext}
	}
	db, err := crypto.DecryptBatch(ctx, &vaultgatev1.DecryptBatchRequest{Key: "billing", Items: back})
	must(err, "DecryptBatch")
	same := len(db.Results) == len(plaintexts)
	for i := 0; same && i < len(plaintexts); i++ {
		same = db.Results[i].Error == nil && bytes.Equal(db.Results[i].Plaintext, plaintexts[i])
	}
	check(same, fmt.Sprintf("DecryptBatch returns the plaintexts in order: got %d results", len(db.Results)))

	// GetSecret.
	secrets := vaultgatev1.NewSecretServiceClient(conn)
	s, err := secrets.GetSecret(ctx, &vaultgatev1.GetSecretRequest{Path: "billing/api-keys"})
	must(err, "GetSecret")
	stripe := s.GetData().GetFields()["stripe_key"].GetStringValue()
	check(stripe == "sk_test_demo" && s.Version >= 1,
		fmt.Sprintf("GetSecret billing/api-keys has stripe_key == sk_test_demo: got %d field(s), version %d", len(s.GetData().GetFields()), s.Version))

	// GetDbCreds, then revoke the lease (the database user is dropped).
	dbs := vaultgatev1.NewDatabaseServiceClient(conn)
	c, err := dbs.GetDbCreds(ctx, &vaultgatev1.GetDbCredsRequest{Role: "billing"})
	must(err, "GetDbCreds")
	check(c.Username != "" && c.Password != "" && strings.HasPrefix(c.LeaseId, "database/creds/billing/") && c.GetLeaseDuration().GetSeconds() > 0,
		fmt.Sprintf("GetDbCreds billing returns credentials and a lease: got username %q, lease_id %q, lease_duration %ds",
			c.Username, c.LeaseId, c.GetLeaseDuration().GetSeconds()))
	_, err = dbs.RevokeLease(ctx, &vaultgatev1.RevokeLeaseRequest{LeaseId: c.LeaseId})
	must(err, "RevokeLease")
	check(true, "RevokeLease of that lease")

	// Refusals.
	rctx, rdone := call(reports)
	defer rdone()
	_, err = crypto.Encrypt(rctx, &vaultgatev1.EncryptRequest{Key: "billing", Plaintext: []byte("x")})
	expectCode(err, codes.PermissionDenied, "reports caller refused Transit key billing")
	_, err = secrets.GetSecret(rctx, &vaultgatev1.GetSecretRequest{Path: "billing/api-keys"})
	expectCode(err, codes.PermissionDenied, "reports caller refused secret billing/api-keys")
	nctx, ndone := call(context.Background())
	defer ndone()
	_, err = crypto.Encrypt(nctx, &vaultgatev1.EncryptRequest{Key: "billing", Plaintext: []byte("x")})
	expectCode(err, codes.Unauthenticated, "call without credentials refused")
}

func main() {
	addr := flag.String("addr", envOr("VAULTGATE_ADDR", "127.0.0.1:50051"), "gateway address")
	dir := flag.String("dir", envOr("VAULTGATE_DEV_DIR", ".dev"), "vaultgate dev's directory (callers/*.jwt)")
	config := flag.String("service-config", "proto/vaultgate/v1/service_config.json", "gRPC service config (JSON)")
	flag.Parse()
	if _, err := os.Stat(filepath.Join(*dir, "callers", "billing.jwt")); err != nil {
		fmt.Fprintf(os.Stderr, "go client: FAIL: %s/callers/billing.jwt not found (--dir must be vaultgate dev's directory)\n", *dir)
		os.Exit(2)
	}
	serviceConfig, err := ioutil.ReadFile(*config)
	if err != nil {
		fmt.Fprintf(os.Stderr, "go client: FAIL: %v\n", err)
		os.Exit(2)
	}
	fmt.Printf("go client: %s, grpc-go %s, retries %s\n", *addr, grpc.Version, retries())
	defer func() {
		if r := recover(); r != nil {
			if c, ok := r.(checkFailed); ok {
				fmt.Fprintf(os.Stderr, "go client: FAIL: %s\n", c.what)
				os.Exit(1)
			}
			panic(r)
		}
	}()
	run(*addr, *dir, string(serviceConfig))
	fmt.Println("go client: all checks passed")
}

// grpc-go before 1.40 applies a service config's retryPolicy only with GRPC_GO_RETRY=on.
func retries() string {
	if strings.EqualFold(os.Getenv("GRPC_GO_RETRY"), "on") {
		return "on (GRPC_GO_RETRY=on)"
	}
	return "off (set GRPC_GO_RETRY=on with grpc-go < 1.40)"
}

func envOr(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}
