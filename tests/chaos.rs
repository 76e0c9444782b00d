//! The chaos scenarios of docs/reliability.md in their short (CI) sizes;
//! `cargo bench --bench chaos` runs them at full size. Each asserts every
//! goal of its scenario and prints its one-line summary.
mod common;
#[path = "chaos/scenarios.rs"]
mod scenarios;

use scenarios::{Report, SHORT};

fn check(r: Report) {
    eprintln!("{}", r.line());
    assert!(r.passed(), "{}", r.line());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_churn_loses_nothing() {
    check(scenarios::node_churn(SHORT).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_loses_no_shard() {
    check(scenarios::pause(SHORT).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_loses_no_shard() {
    check(scenarios::leader_kill(SHORT).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_node_loses_nothing_and_serves_again() {
    check(scenarios::partition(SHORT).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_results_leader_loses_nothing() {
    check(scenarios::server_loss(SHORT, "WEAVE_RESULTS").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_is_answered_and_changes_nothing() {
    check(scenarios::hostile(SHORT).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_named_and_nothing_accepted_is_lost() {
    check(scenarios::limits(SHORT).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_with_sync_always() {
    check(scenarios::durability(SHORT).await);
}
