//! The chaos suite at full size (docs/reliability.md): every scenario of
//! issue #13, one summary line each; exits non-zero when a goal is missed.
//! `cargo bench --bench chaos [-- NAME...]` (names: churn, server-loss,
//! durability, partition, pause, leader, hostile, limits); `CHAOS_REPS`
//! (default 1) repeats each. The short versions run in the test suite
//! (tests/chaos.rs).
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/chaos/scenarios.rs"]
mod scenarios;

use scenarios::{Report, LONG};

const ALL: &[&str] = &[
    "churn",
    "server-loss",
    "durability",
    "partition",
    "pause",
    "leader",
    "hostile",
    "limits",
];

async fn run(name: &str) -> Vec<Report> {
    match name {
        "churn" => vec![scenarios::node_churn(LONG).await],
        "server-loss" => {
            let mut out = Vec::new();
            for target in ["WEAVE_TASKS", "WEAVE_RESULTS", "KV_weave-runs", "random"] {
                out.push(scenarios::server_loss(LONG, target).await);
            }
            out
        }
        "durability" => vec![scenarios::durability(LONG).await],
        "partition" => vec![scenarios::partition(LONG).await],
        "pause" => vec![scenarios::pause(LONG).await],
        "leader" => vec![scenarios::leader_kill(LONG).await],
        "hostile" => vec![scenarios::hostile(LONG).await],
        "limits" => vec![scenarios::limits(LONG).await],
        other => panic!("unknown scenario {other:?}; one of {ALL:?}"),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!(
            "benchmark skipped: run `cargo bench --bench chaos` (short versions: tests/chaos.rs)"
        );
        return;
    }
    let picked: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with("--"))
        .map(|a| a.as_str())
        .collect();
    let names = if picked.is_empty() {
        ALL.to_vec()
    } else {
        picked
    };
    let reps: usize = std::env::var("CHAOS_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut missed = 0;
    for name in names {
        for rep in 1..=reps {
            for r in run(name).await {
                println!("[{rep}/{reps}] {}", r.line());
                if !r.passed() {
                    missed += 1;
                }
            }
        }
    }
    if missed > 0 {
        eprintln!("{missed} scenario runs missed a goal");
        std::process::exit(1);
    }
}
