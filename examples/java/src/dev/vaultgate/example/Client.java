// vaultgate example client in Java (grpc-java with Netty, protobuf-java).
//
// Does what the Python and Node examples do against a running `vaultgate dev`: health of "" and
// the three services, Encrypt/Decrypt, EncryptBatch then DecryptBatch, GetSecret, GetDbCreds then
// RevokeLease as `billing`, and the refusals. The channel uses proto/vaultgate/v1/service_config.json
// (retries of UNAVAILABLE and RESOURCE_EXHAUSTED on idempotent RPCs, per-method timeouts). Exits 0
// when every check passes, 1 on the first wrong answer, 2 on a usage error.
//
// Build and run with examples/java/run.sh (javac against Debian's /usr/share/java jars):
//   bash examples/java/run.sh --addr 127.0.0.1:50051 --dir .dev
package dev.vaultgate.example;

import com.google.protobuf.ByteString;
import dev.vaultgate.v1.DatabaseServiceGrpc;
import dev.vaultgate.v1.DecryptBatchItem;
import dev.vaultgate.v1.DecryptBatchRequest;
import dev.vaultgate.v1.DecryptBatchResponse;
import dev.vaultgate.v1.DecryptRequest;
import dev.vaultgate.v1.DecryptResponse;
import dev.vaultgate.v1.EncryptBatchItem;
import dev.vaultgate.v1.EncryptBatchRequest;
import dev.vaultgate.v1.EncryptBatchResponse;
import dev.vaultgate.v1.EncryptBatchResult;
import dev.vaultgate.v1.EncryptRequest;
import dev.vaultgate.v1.EncryptResponse;
import dev.vaultgate.v1.EncryptionServiceGrpc;
import dev.vaultgate.v1.GetDbCredsRequest;
import dev.vaultgate.v1.GetDbCredsResponse;
import dev.vaultgate.v1.GetSecretRequest;
import dev.vaultgate.v1.GetSecretResponse;
import dev.vaultgate.v1.RevokeLeaseRequest;
import dev.vaultgate.v1.SecretServiceGrpc;
import io.grpc.ManagedChannel;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.health.v1.HealthCheckRequest;
import io.grpc.health.v1.HealthCheckResponse;
import io.grpc.health.v1.HealthGrpc;
import io.grpc.netty.NettyChannelBuilder;
import io.grpc.stub.AbstractStub;
import io.grpc.stub.MetadataUtils;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.function.Supplier;

public final class Client {
  private static final long TIMEOUT_SECONDS = 10; // the deadline of every call

  static final class CheckFailed extends RuntimeException {
    CheckFailed(String what) {
      super(what);
    }
  }

  /** Fails with `what` (a claim, then ": got ..." detail) unless cond; prints the claim when it holds. */
  static void check(boolean cond, String what) {
    if (!cond) throw new CheckFailed(what);
    System.out.println("  ok  " + what.split(": got ")[0].split(": expected ")[0]);
  }

  static <S extends AbstractStub<S>> S as(S stub, String jwt) {
    Metadata md = new Metadata();
    md.put(Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER), "Bearer " + jwt);
    return stub.withInterceptors(MetadataUtils.newAttachHeadersInterceptor(md));
  }

  static <S extends AbstractStub<S>> S timed(S stub) {
    return stub.withDeadlineAfter(TIMEOUT_SECONDS, TimeUnit.SECONDS);
  }

  static void expectCode(Supplier<?> call, Status.Code code, String what) {
    try {
      call.get();
    } catch (StatusRuntimeException e) {
      Status s = e.getStatus();
      check(s.getCode() == code, what + ": expected " + code + ", got " + s.getCode() + ": " + s.getDescription());
      return;
    }
    throw new CheckFailed(what + ": expected " + code + ", but the call succeeded");
  }

  static void run(String addr, Path dir, Map<String, ?> serviceConfig) throws Exception {
    String billing = Files.readString(dir.resolve("callers/billing.jwt")).trim();
    String reports = Files.readString(dir.resolve("callers/reports.jwt")).trim();
    int colon = addr.lastIndexOf(':');
    ManagedChannel channel = NettyChannelBuilder.forAddress(addr.substring(0, colon), Integer.parseInt(addr.substring(colon + 1)))
        .usePlaintext()
        .defaultServiceConfig(serviceConfig)
        .enableRetry()
        .build();
    try {
      // Standard health-check client (grpc.health.v1), no credentials; waits for the connection.
      HealthGrpc.HealthBlockingStub health = HealthGrpc.newBlockingStub(channel).withWaitForReady();
      for (String service : List.of("", "vaultgate.v1.EncryptionService", "vaultgate.v1.SecretService", "vaultgate.v1.DatabaseService")) {
        HealthCheckResponse r = timed(health).check(HealthCheckRequest.newBuilder().setService(service).build());
        check(r.getStatus() == HealthCheckResponse.ServingStatus.SERVING,
            "health " + (service.isEmpty() ? "(server)" : service) + " is SERVING: got " + r.getStatus());
      }

      // Encrypt / Decrypt round trip.
      EncryptionServiceGrpc.EncryptionServiceBlockingStub crypto = as(EncryptionServiceGrpc.newBlockingStub(channel), billing);
      EncryptResponse e = timed(crypto).encrypt(EncryptRequest.newBuilder().setKey("billing").setPlaintext(ByteString.copyFromUtf8("hello")).build());
      check(e.getCiphertext().startsWith("vault:v") && e.getKeyVersion() >= 1,
          "Encrypt returns a vault:vN: ciphertext: got " + e.getCiphertext() + ", key_version " + e.getKeyVersion());
      DecryptResponse d = timed(crypto).decrypt(DecryptRequest.newBuilder().setKey("billing").setCiphertext(e.getCiphertext()).build());
      check(d.getPlaintext().toStringUtf8().equals("hello") && d.getKeyVersion() == e.getKeyVersion(),
          "Decrypt returns the plaintext: got " + d.getPlaintext().toStringUtf8() + ", key_version " + d.getKeyVersion());

      // EncryptBatch, then DecryptBatch of its results.
      byte[] all = new byte[256];
      for (int i = 0; i < all.length; i++) all[i] = (byte) i;
      List<ByteString> plaintexts = List.of(ByteString.copyFromUtf8("alpha"), ByteString.EMPTY, ByteString.copyFrom(all));
      EncryptBatchRequest.Builder batch = EncryptBatchRequest.newBuilder().setKey("billing");
      for (ByteString p : plaintexts) batch.addItems(EncryptBatchItem.newBuilder().setPlaintext(p));
      EncryptBatchResponse b = timed(crypto).encryptBatch(batch.build());
      check(b.getResultsCount() == plaintexts.size(), "EncryptBatch answers every item: got " + b.getResultsCount() + " results");
      DecryptBatchRequest.Builder back = DecryptBatchRequest.newBuilder().setKey("billing");
      for (int i = 0; i < b.getResultsCount(); i++) {
        EncryptBatchResult r = b.getResults(i);
        check(!r.hasError() && r.getCiphertext().startsWith("vault:v"),
            "EncryptBatch item " + i + " succeeded: got error " + r.getError().getMessage() + ", ciphertext " + r.getCiphertext());
        back.addItems(DecryptBatchItem.newBuilder().setCiphertext(r.getCiphertext()));
      }
      DecryptBatchResponse db = timed(crypto).decryptBatch(back.build());
      List<ByteString> got = new ArrayList<>();
      db.getResultsList().forEach(r -> got.add(r.getPlaintext()));
      check(got.equals(plaintexts), "DecryptBatch returns the plaintexts in order: got " + got.size() + " results");

      // GetSecret.
      SecretServiceGrpc.SecretServiceBlockingStub secrets = SecretServiceGrpc.newBlockingStub(channel);
      GetSecretResponse s = timed(as(secrets, billing)).getSecret(GetSecretRequest.newBuilder().setPath("billing/api-keys").build());
      String stripe = s.getData().getFieldsOrDefault("stripe_key", com.google.protobuf.Value.getDefaultInstance()).getStringValue();
      check(stripe.equals("sk_test_demo") && s.getVersion() >= 1,
          "GetSecret billing/api-keys has stripe_key == sk_test_demo: got keys " + s.getData().getFieldsMap().keySet() + ", version " + s.getVersion());

      // GetDbCreds, then revoke the lease (the database user is dropped).
      DatabaseServiceGrpc.DatabaseServiceBlockingStub dbs = as(DatabaseServiceGrpc.newBlockingStub(channel), billing);
      GetDbCredsResponse c = timed(dbs).getDbCreds(GetDbCredsRequest.newBuilder().setRole("billing").build());
      check(!c.getUsername().isEmpty() && !c.getPassword().isEmpty() && c.getLeaseId().startsWith("database/creds/billing/")
              && c.getLeaseDuration().getSeconds() > 0,
          "GetDbCreds billing returns credentials and a lease: got username " + c.getUsername() + ", lease_id " + c.getLeaseId()
              + ", lease_duration " + c.getLeaseDuration().getSeconds() + "s");
      timed(dbs).revokeLease(RevokeLeaseRequest.newBuilder().setLeaseId(c.getLeaseId()).build());
      check(true, "RevokeLease of that lease");

      // Refusals.
      EncryptRequest x = EncryptRequest.newBuilder().setKey("billing").setPlaintext(ByteString.copyFromUtf8("x")).build();
      expectCode(() -> timed(as(EncryptionServiceGrpc.newBlockingStub(channel), reports)).encrypt(x),
          Status.Code.PERMISSION_DENIED, "reports caller refused Transit key billing");
      expectCode(() -> timed(as(secrets, reports)).getSecret(GetSecretRequest.newBuilder().setPath("billing/api-keys").build()),
          Status.Code.PERMISSION_DENIED, "reports caller refused secret billing/api-keys");
      expectCode(() -> timed(EncryptionServiceGrpc.newBlockingStub(channel)).encrypt(x),
          Status.Code.UNAUTHENTICATED, "call without credentials refused");
    } finally {
      channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
    }
  }

  public static void main(String[] args) throws Exception {
    String addr = System.getenv().getOrDefault("VAULTGATE_ADDR", "127.0.0.1:50051");
    String dir = System.getenv().getOrDefault("VAULTGATE_DEV_DIR", ".dev");
    String config = "proto/vaultgate/v1/service_config.json";
    for (int i = 0; i + 1 < args.length; i += 2) {
      switch (args[i]) {
        case "--addr": addr = args[i + 1]; break;
        case "--dir": dir = args[i + 1]; break;
        case "--service-config": config = args[i + 1]; break;
        default:
          System.err.println("usage: Client [--addr HOST:PORT] [--dir DEV_DIR] [--service-config FILE]");
          System.exit(2);
      }
    }
    if (!Files.isRegularFile(Path.of(dir, "callers", "billing.jwt"))) {
      System.err.println("java client: FAIL: " + dir + "/callers/billing.jwt not found (--dir must be vaultgate dev's directory)");
      System.exit(2);
    }
    // grpc-java takes the service config as parsed JSON; its own parser gives the types it expects.
    @SuppressWarnings("unchecked")
    Map<String, ?> serviceConfig = (Map<String, ?>) io.grpc.internal.JsonParser.parse(Files.readString(Path.of(config), StandardCharsets.UTF_8));
    System.out.println("java client: " + addr + ", grpc-java " + io.grpc.internal.GrpcUtil.getGrpcBuildVersion());
    try {
      run(addr, Path.of(dir), serviceConfig);
    } catch (CheckFailed e) {
      System.err.println("java client: FAIL: " + e.getMessage());
      System.exit(1);
    } catch (StatusRuntimeException e) {
      System.err.println("java client: FAIL: unexpected " + e.getStatus().getCode() + ": " + e.getStatus().getDescription());
      System.exit(1);
    }
    System.out.println("java client: all checks passed");
  }
}
