//! The integration test binary: starts one real OpenBao dev server and one PostgreSQL, provisions
//! them (as `vaultgate dev` does, plus test callers), starts the gateway in-process on
//! `127.0.0.1:0`, runs every test concurrently against it (then the few in `ALONE` one at a
//! time), stops the stack, and finally checks that the gateway's log of the whole run holds no
//! secret.
//!
//! A custom runner (not libtest) so the stack starts once and is always stopped, and so the log
//! check sees the whole run. `cargo test --test it -- NAME` runs the tests whose name contains NAME.

mod attacks;
mod attacks_auth;
mod availability;
mod badinput;
mod batching;
mod behaviours;
mod callers;
mod contract;
mod database;
mod encryption;
mod ha;
mod health;
mod identity;
mod lifecycle;
mod logs;
mod oracles;
mod overload;
mod pki;
mod rotation;
mod secrets;
mod signing;
mod streams;
mod support;
mod tools;
mod traces;

use std::{future::Future, pin::Pin, time::Duration};
use support::Env;

type TestFn = fn(&'static Env) -> Pin<Box<dyn Future<Output = ()> + Send>>;

macro_rules! tests {
    ($($module:ident::$name:ident),* $(,)?) => {
        &[$((concat!(stringify!($module), "::", stringify!($name)), |env| Box::pin($module::$name(env)))),*]
    };
}

/// Every test, by name.
const TESTS: &[(&str, TestFn)] = tests![
    encryption::round_trip_matches_vault,
    encryption::batch_rpcs_answer_in_order,
    encryption::batch_item_failures_stay_alone,
    encryption::key_lifecycle_rpcs,
    encryption::generate_data_key_unwraps_in_vault,
    encryption::error_table,
    encryption::concurrent_calls_are_coalesced_and_answered_correctly,
    batching::two_thousand_single_calls_take_ten_times_fewer_vault_requests,
    secrets::get_and_list,
    secrets::error_table,
    database::creds_log_in_renew_and_revoke,
    database::lease_outlives_caller_token,
    database::error_table,
    database::lease_ownership_holds_across_replicas,
    callers::credentials_error_table,
    callers::callers_cannot_use_each_others_resources,
    callers::five_hundred_mixed_round_trips,
    callers::one_login_for_fifty_first_calls,
    health::follows_vault_down_and_up,
    ha::sealed_vault_is_unavailable_naming_the_seal,
    ha::standby_redirects_are_followed,
    lifecycle::audit_log_has_one_line_per_call_and_fails_closed,
    lifecycle::shutdown_goes_not_serving_first_and_finishes_calls_in_flight,
    badinput::bad_input_table,
    tools::grpcurl_lists_and_encrypts,
    tools::metrics_endpoint_serves_prometheus_text,
    tools::request_ids_are_returned,
    identity::certificate_callers_map_to_their_roles,
    identity::gateway_rules_refuse_before_vault,
    identity::tokens_renew_and_relogin_under_trickle,
    identity::revoked_tokens_are_replaced,
    identity::certificate_files_reload_without_dropping_connections,
    identity::kubernetes_callers_log_in,
    identity::token_file_roles_and_revocation_at_shutdown,
    pki::issued_certificate_chains_to_the_ca_and_serves_tls,
    pki::signed_csr_carries_the_csr_public_key,
    pki::revocation_needs_the_private_key,
    pki::pki_error_table,
    pki::audit_and_metrics_cover_certificates_and_signatures,
    signing::sign_and_verify_agree_with_vault,
    signing::hmac_and_verify_hmac_agree_with_vault,
    signing::five_hundred_concurrent_signs_are_coalesced,
    availability::concurrent_reads_coalesce_and_changes_show_within_the_ttl,
    availability::cached_answers_never_cross_callers,
    availability::idle_callers_are_served_without_a_new_login,
    attacks_auth::unknown_kid_flood_refetches_the_jwks_at_most_once_per_ten_seconds,
    attacks_auth::vault_redirect_to_a_foreign_host_is_not_followed,
    attacks_auth::the_gateways_own_token_is_replaced_at_once_when_vault_refuses_it,
    attacks_auth::vault_certificates_from_other_cas_are_refused_when_ca_cert_is_set,
    behaviours::shutdown_drains_held_calls_drops_late_ones_and_keeps_leases,
    behaviours::writes_are_sent_once_when_the_connection_drops,
    behaviours::slow_vault_is_unavailable_within_the_timeout,
    behaviours::required_client_certificate_refuses_clients_without_one,
    behaviours::vault_namespace_is_where_requests_go,
    behaviours::audit_fail_open_serves_when_the_sink_fails,
    behaviours::invalid_request_ids_are_replaced,
    behaviours::deleted_and_destroyed_kv_versions_are_not_found,
    oracles::batch_budget_meets_openbao_at_its_limit,
    oracles::vault_judges_ciphertext_forms,
    attacks::random_mounts_and_paths_grow_no_metric_series_or_audit_line,
    attacks::idle_tls_connections_do_not_hold_the_connection_slots,
    attacks::silent_streams_holding_the_byte_budget_are_cut_at_the_read_timeout,
    contract::transit_requests_name_their_mount,
    contract::batch_items_carry_key_versions,
    contract::old_connections_are_closed_without_failing_calls,
    streams::watch_secret_new_versions_reach_two_watchers_and_deletion_ends_them,
    streams::two_hundred_watchers_of_one_path_cost_one_poller,
    streams::a_stream_ends_unauthenticated_when_its_callers_jwt_expires,
    streams::watch_db_creds_renews_rotates_and_revokes_after_the_grace,
    streams::callers_ending_watch_db_creds_early_leave_no_lease,
    streams::a_failed_reissue_is_tried_again_while_the_held_lease_lasts,
    streams::shutdown_ends_a_hundred_streams_unavailable_and_leaves_no_lease,
    streams::stream_bounds_attack_table,
    traces::encrypt_is_traced_from_the_callers_traceparent_to_vault,
    rotation::decrypt_after_rotation_recommends_rewrap_without_a_key_read_per_call,
    rotation::rewrap_batch_of_a_thousand_takes_few_vault_requests,
    rotation::bound_ciphertexts_decrypt_only_for_their_caller,
    rotation::watch_key_sees_rotations_made_anywhere,
];

/// Tests that measure time or load the machine on purpose: run one at a time after the others,
/// so that they neither disturb the others nor are disturbed by them.
const ALONE: &[(&str, TestFn)] = tests![
    lifecycle::a_noisy_caller_is_throttled_alone,
    overload::ten_thousand_calls_against_a_slow_vault_are_shed_or_answered_right,
    availability::frozen_vault_fails_fast_serves_stale_and_recovers,
    availability::black_holed_node_costs_no_more_than_detection_and_reads_hedge,
    attacks_auth::forged_jwts_cost_vault_nothing,
    attacks_auth::forged_jwts_without_local_verification_are_capped,
    // Their bounds (longest gap without a success, failing fast, recovery) are timings.
    ha::leader_failover_under_load_loses_no_answer,
    ha::vault_stopped_then_started_fails_fast_and_recovers,
    attacks::many_streams_of_slow_megabyte_messages_stay_within_memory_bound,
    attacks::two_thousand_idle_connections_do_not_delay_a_new_handshake,
    attacks::four_mebibytes_of_empty_batch_items_are_refused_before_decoding,
];

/// Upper bound of one test, so a hang fails instead of blocking CI.
const TEST_TIMEOUT: Duration = Duration::from_secs(180);

/// The concurrent tests start this far apart (about 5 s for all of them). Started at once, their
/// gateways and first calls kept OpenBao from answering anything for over a second on 2 cores,
/// past the gateways' `silent_after` (750 ms), and tests that were not about that failed fast.
const STAGGER: Duration = Duration::from_millis(60);

fn main() {
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let wanted = |(name, _): &&(&str, TestFn)| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    let selected: Vec<_> = TESTS.iter().filter(wanted).collect();
    let alone: Vec<_> = ALONE.iter().filter(wanted).collect();
    let full_run = filter.is_empty();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot build the tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    let failed = runtime.block_on(async move {
        let log = logs::capture();
        let env: &'static Env = Box::leak(Box::new(Env::start().await));
        println!(
            "\nrunning {} tests against OpenBao {} and the gateway at {}",
            selected.len() + alone.len(),
            env.vault_addr,
            env.addr
        );
        let run = |test: TestFn, delay: Duration| {
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let started = std::time::Instant::now();
                let finished = tokio::time::timeout(TEST_TIMEOUT, test(env)).await.is_ok();
                (finished, started.elapsed())
            })
        };
        let mut handles = Vec::new();
        for (i, (name, test)) in selected.iter().copied().enumerate() {
            handles.push((*name, run(*test, STAGGER * i as u32)));
        }
        let mut failed = Vec::new();
        let mut finished = Vec::new();
        for (name, task) in handles {
            finished.push((name, task.await));
        }
        for (name, test) in alone.iter().copied() {
            let result = run(*test, Duration::ZERO).await;
            finished.push((*name, result));
        }
        for (name, result) in finished {
            let (outcome, took) = match result {
                Ok((true, took)) => ("ok", took),
                Ok((false, took)) => ("FAILED (timed out)", took),
                Err(_) => ("FAILED (panicked, see above)", Duration::ZERO),
            };
            println!("test {name} ... {outcome} ({:.1} s)", took.as_secs_f64());
            if outcome != "ok" {
                failed.push(name);
            }
        }
        let stopping = std::time::Instant::now();
        env.stop().await;
        println!("  the stack stopped in {:.1} s", stopping.elapsed().as_secs_f64());
        let mut passed = selected.len() + alone.len() - failed.len();
        let mut failed_n = failed.len();
        // The scan must be able to fail before its verdict on the run means anything.
        let registered = env.plaintexts().len();
        let scanning = std::time::Instant::now();
        let (wrong, caught) = logs::self_check(&log, env, full_run);
        println!(
            "test logs::scan_catches_planted_secrets ... {} ({caught} planted secrets caught, {} plaintexts registered; {:.1} s)",
            if wrong.is_empty() { "ok" } else { "FAILED" },
            registered,
            scanning.elapsed().as_secs_f64()
        );
        let leaks = logs::check(&log, env);
        println!("test logs::whole_run_holds_no_secret ... {}", if leaks.is_empty() { "ok" } else { "FAILED" });
        for problems in [&wrong, &leaks] {
            for p in problems {
                println!("  {p}");
            }
            if problems.is_empty() {
                passed += 1;
            } else {
                failed_n += 1;
            }
        }
        println!("\nintegration: {passed} passed, {failed_n} failed");
        failed_n
    });
    std::process::exit(if failed == 0 { 0 } else { 1 });
}
