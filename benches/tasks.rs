//! Task throughput and latency, side by side with raw JetStream on the
//! same server in the same run (the machine is noisy; compare ratios).
//!
//! `cargo bench --bench tasks` (env: BENCH_N tasks per pass, default 20000;
//! BENCH_REPS repetitions, default 3; BENCH_ONLY=ff runs only raw, (a''),
//! and the fire-and-forget pass, =results only raw and one node with results,
//! for profiling one of them; =latency only the latency passes at 100 and
//! 1 000 tasks/s).
//!
//! (a) raw: an async-nats publisher (pipelined acks) and a pull consumer
//!     (fetch + ack) on a work-queue stream, running concurrently;
//! (a') the bound for tasks with a stored result: (a) plus a result
//!     stored per message the way a node stores it (no node logic);
//! (a'') `BENCH_ONLY` only: (a) with jetweave's consumer layout (four
//!     consumers filtered by priority, requests waiting on the idle ones);
//! (b) jetweave: `echo` tasks published on `weave.tasks.default.normal`
//!     (pipelined acks) until every terminal result is on `P_RESULTS`,
//!     with 1, 2 and 4 `jetweave node` processes;
//! (b') the same with `ignore_result` (fire and forget), 1 node, until the
//!     task stream is empty;
//! (c) submit-to-result latency at 100, 1 000 and 5 000 tasks/s, open
//!     loop, one node; (c') the same through raw JetStream (a pull
//!     consumer with a request waiting that stores a result and acks) and
//!     core request/reply paced at the same rates: the floors at that rate.
#[path = "../tests/common/mod.rs"]
mod common;
mod shared;

use std::time::{Duration, Instant};

use async_nats::jetstream;
use common::*;
use futures::StreamExt;
use shared::*;

/// The raw references run in this process: they allocate with the same
/// allocator as the `jetweave` binary (mimalloc), so that the ratios
/// compare like with like.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Fire-and-forget throughput (`ignore_result`): `n` echo tasks published
/// until the work-queue stream is empty again (every task acked; no result
/// is stored to count).
pub async fn weave_fire_and_forget(server: &NatsServer, n: usize, pass: usize) -> f64 {
    let client = server.client().await;
    let js = jetstream::new(client.clone());
    let tasks = js.get_stream("WEAVE_TASKS").await.unwrap();
    let body = bytes::Bytes::from(r#"{"type":"echo","payload":{"n":1},"ignore_result":true}"#);
    let t0 = Instant::now();
    let pjs = jetstream::new(server.client().await);
    publish_all(
        &pjs,
        "weave.tasks.default.normal",
        n,
        &body,
        &format!("f{pass}-"),
    )
    .await;
    let done = || {
        let tasks = &tasks;
        async move { n as u64 - tasks.get_info().await.unwrap().state.messages.min(n as u64) }
    };
    poll_until(done, n as u64, t0).await;
    n as f64 / t0.elapsed().as_secs_f64()
}

/// (c) latency at a steady offered load, open loop: send times are fixed
/// by the schedule, not by completions.
async fn latency(server: &NatsServer, rate: f64, n: usize, pass: usize) -> (f64, f64, f64) {
    let body = |id: &str, i: usize| format!(r#"{{"type":"echo","id":"{id}","payload":{i}}}"#);
    let probe = Probe {
        subject: "weave.tasks.default.normal".into(),
        results: "weave.results".into(),
        ids: format!("lat{pass}-"),
    };
    open_loop(server, rate, n, &probe, body).await
}

/// Where an open-loop pass publishes, where each result comes back
/// (`<results>.<id>`), and the prefix of its ids (`<ids><i>`).
struct Probe {
    subject: String,
    results: String,
    ids: String,
}

/// Publishes `n` messages at `rate` on `probe.subject` and times each one
/// until its result arrives: p50, p99, p99.9 in ms.
async fn open_loop(
    server: &NatsServer,
    rate: f64,
    n: usize,
    probe: &Probe,
    body: impl Fn(&str, usize) -> String + Send + 'static,
) -> (f64, f64, f64) {
    let client = server.client().await;
    let mut results = client
        .subscribe(format!("{}.>", probe.results))
        .await
        .unwrap();
    client.flush().await.unwrap();
    let js = jetstream::new(server.client().await);
    let start = tokio::time::Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let sent = std::sync::Arc::new(std::sync::Mutex::new(vec![None::<Instant>; n]));
    let (s2, subject, ids) = (sent.clone(), probe.subject.clone(), probe.ids.clone());
    let publisher = tokio::spawn(async move {
        let mut pending = Vec::with_capacity(n);
        for i in 0..n {
            tokio::time::sleep_until(start + interval * i as u32).await;
            let body = body(&format!("{ids}{i}"), i);
            s2.lock().unwrap()[i] = Some(Instant::now());
            // Fire the publish; its ack is awaited off the schedule.
            let ack = js.publish(subject.clone(), body.into()).await.unwrap();
            pending.push(tokio::spawn(async move { ack.await.unwrap() }));
        }
        // The context must outlive its pending acks.
        for p in pending {
            p.await.unwrap();
        }
        drop(js);
    });
    let mut lat = Vec::with_capacity(n);
    while lat.len() < n {
        let m = results.next().await.unwrap();
        let now = Instant::now();
        let id = m.subject.rsplit('.').next().unwrap().to_string();
        let Some(i) = id.strip_prefix(probe.ids.as_str()) else {
            continue;
        };
        let i: usize = i.parse().unwrap();
        let t = sent.lock().unwrap()[i].unwrap();
        lat.push(now.duration_since(t).as_secs_f64() * 1000.0);
        if std::env::var("BENCH_SLOW").is_ok() && *lat.last().unwrap() > 20.0 {
            eprintln!(
                "slow: {id} sent at +{:?}, took {:.1} ms",
                t.duration_since(start.into_std()),
                lat.last().unwrap()
            );
        }
    }
    publisher.await.unwrap();
    lat.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    (q(0.5), q(0.99), q(0.999))
}

/// (c') the floor of (c) at the same rate, in raw JetStream: a work-queue
/// stream, a pull consumer with a request waiting (async-nats `messages()`,
/// on a thread and connection of its own as a node has its own process)
/// that stores a result per message (first write wins, as a node's) and
/// acks it.
async fn raw_latency(server: &NatsServer, rate: f64, n: usize, pass: usize) -> (f64, f64, f64) {
    let js = jetstream::new(server.client().await);
    let (name, prefix) = (format!("RAWL{pass}"), format!("rawl{pass}"));
    let (rname, rprefix) = (format!("RAWLRES{pass}"), format!("rawlres{pass}"));
    let config = |name: &str, subjects: String, retention| jetstream::stream::Config {
        name: name.to_string(),
        subjects: vec![subjects],
        retention,
        ..Default::default()
    };
    use jetstream::stream::RetentionPolicy::{Limits, WorkQueue};
    let tasks = js
        .create_stream(config(&name, format!("{prefix}.>"), WorkQueue))
        .await
        .unwrap();
    js.create_stream(config(&rname, format!("{rprefix}.>"), Limits))
        .await
        .unwrap();
    let consumer_config = jetstream::consumer::pull::Config {
        durable_name: Some("w".into()),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ..Default::default()
    };
    tasks.create_consumer(consumer_config).await.unwrap();
    let (url, stream, results) = (server.url(), name.clone(), rprefix.clone());
    let worker = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(raw_worker(url, stream, results, n));
    });
    let probe = Probe {
        subject: format!("{prefix}.q"),
        results: rprefix,
        ids: format!("r{pass}-"),
    };
    let out = open_loop(server, rate, n, &probe, |id, _| id.to_string()).await;
    worker.join().unwrap();
    js.delete_stream(&name).await.unwrap();
    js.delete_stream(&rname).await.unwrap();
    out
}

/// The raw consumer of (c'): for `n` messages, stores `<results>.<body>`
/// and acks.
async fn raw_worker(url: String, stream: String, results: String, n: usize) {
    let client = async_nats::connect(url).await.unwrap();
    let js = jetstream::new(client);
    let stream = js.get_stream(&stream).await.unwrap();
    let consumer: jetstream::consumer::PullConsumer = stream.get_consumer("w").await.unwrap();
    let mut msgs = consumer.messages().await.unwrap();
    for _ in 0..n {
        let m = msgs.next().await.unwrap().unwrap();
        let id = String::from_utf8_lossy(&m.payload).to_string();
        let p = jetstream::message::PublishMessage::build()
            .payload(r#"{"status":"completed"}"#.into())
            .expected_last_subject_sequence(0);
        let subject = format!("{results}.{id}");
        js.send_publish(subject, p).await.unwrap().await.unwrap();
        m.ack().await.unwrap();
    }
}

/// Core NATS request/reply round trip, the floor for any request on this
/// machine: p50, p99, p99.9 in ms; back to back, or one request per
/// `1 / rate` s (the processes go idle between requests as they do
/// between tasks at that rate, and waking them costs on a VM).
async fn core_rtt(server: &NatsServer, n: usize, rate: Option<f64>) -> (f64, f64, f64) {
    let responder = server.client().await;
    let mut sub = responder.subscribe("bench.rtt").await.unwrap();
    responder.flush().await.unwrap();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Some(r) = m.reply {
                let _ = responder.publish(r, m.payload).await;
            }
        }
    });
    let client = server.client().await;
    let mut lat = Vec::with_capacity(n);
    let start = tokio::time::Instant::now();
    for i in 0..n {
        if let Some(rate) = rate {
            tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
        }
        let t0 = Instant::now();
        client.request("bench.rtt", "x".into()).await.unwrap();
        lat.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    (q(0.5), q(0.99), q(0.999))
}

/// `BENCH_ONLY`: raw and one jetweave pass (`ff` or `results`), one
/// node, so that a profiler sees one workload at a time.
async fn profile_one(server: &NatsServer, mport: u16, only: &str, n: usize, reps: usize) {
    let spid = server.pid().unwrap_or(0);
    // Messages in and out of the server per task while `f` runs.
    let msgs = |t0: (f64, f64)| {
        let (i, o) = varz_msgs(mport);
        ((i - t0.0) / n as f64, (o - t0.1) / n as f64)
    };
    // The server's CPU seconds while `f` runs, per 1 000 messages.
    let cpu = |t0: f64| (cpu_seconds(spid) - t0) * 1000.0 / n as f64;
    // This process's (publisher, and the raw consumers).
    let me = std::process::id();
    let mine = |t0: f64| (cpu_seconds(me) - t0) * 1000.0 / n as f64;
    for pass in 0..reps {
        let (t, tm, v) = (cpu_seconds(spid), cpu_seconds(me), varz_msgs(mport));
        let a = raw(server, n, pass).await;
        let (ca, ma, va) = (cpu(t), mine(tm), msgs(v));
        let (t, tm) = (cpu_seconds(spid), cpu_seconds(me));
        let bound = raw_with_result(server, n, pass).await;
        let (cb, mb) = (cpu(t), mine(tm));
        let (t, tm) = (cpu_seconds(spid), cpu_seconds(me));
        let prio = raw_priorities(server, n, pass).await;
        let (cp, mp) = (cpu(t), mine(tm));
        let ns = nodes(server, 1, pass * 10).await;
        let npid = ns[0].pid() as u32;
        let (t, tn, tm) = (cpu_seconds(spid), cpu_seconds(npid), cpu_seconds(me));
        let v = varz_msgs(mport);
        let b = match only {
            "ff" => weave_fire_and_forget(server, n, pass * 10).await,
            _ => weave(server, n, pass * 10).await,
        };
        let (cw, cn, mw) = (
            cpu(t),
            (cpu_seconds(npid) - tn) * 1000.0 / n as f64,
            mine(tm),
        );
        let vw = msgs(v);
        stop(ns).await;
        if only == "results" {
            let t = cpu_seconds(spid);
            let on_weave = raw_on_weave(server, n, pass).await;
            let c = cpu(t);
            println!("        (a''') the bound on jetweave's streams {on_weave:.0} msg/s ({:.3} x raw), server CPU s per 1 000 {c:.3}", on_weave / a);
        }
        println!("pass {pass}: raw {a:.0} msg/s | raw with a stored result {bound:.0} ({:.3} x raw) | jetweave {only} {b:.0} tasks/s ({:.3} x raw)", bound / a, b / a);
        println!(
            "        raw with four priority consumers {prio:.0} msg/s ({:.3} x raw)",
            prio / a
        );
        println!("        server CPU s per 1 000: raw {ca:.3}, raw with result {cb:.3}, raw with priorities {cp:.3}, jetweave {cw:.3}; the node's {cn:.3}");
        println!("        bench process CPU s per 1 000 (publisher, raw consumers): raw {ma:.3}, raw with result {mb:.3}, raw with priorities {mp:.3}, jetweave {mw:.3}");
        println!(
            "        server messages in/out per task: raw {:.2}/{:.2}, jetweave {:.2}/{:.2}",
            va.0, va.1, vw.0, vw.1
        );
    }
}

/// The server's `in_msgs` and `out_msgs` counters (`/varz`).
fn varz_msgs(port: u16) -> (f64, f64) {
    use std::io::{Read, Write};
    let get = || -> Option<(f64, f64)> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.write_all(b"GET /varz HTTP/1.0\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let v: serde_json::Value = serde_json::from_str(out.split_once("\r\n\r\n")?.1).ok()?;
        Some((v["in_msgs"].as_f64()?, v["out_msgs"].as_f64()?))
    };
    get().unwrap_or_default()
}

/// `BENCH_ONLY=latency`: only (c), at 100 and 1 000 tasks/s, one node,
/// `reps` passes (to compare two builds' tails).
async fn latency_only(server: &NatsServer, reps: usize) {
    let ns = nodes(server, 1, 0).await;
    for pass in 0..reps {
        for rate in [100.0, 1000.0] {
            let m = ((rate * 2.0) as usize).clamp(200, 10_000);
            let (p50, p99, p999) = latency(server, rate, m, pass * 10 + rate as usize).await;
            let (c50, c99, _) = core_rtt(server, m, Some(rate)).await;
            let (r50, r99, _) = raw_latency(server, rate, m, pass * 10 + rate as usize).await;
            println!(
                "pass {pass}: {rate} tasks/s p50 {p50:.3} ms, p99 {p99:.3} ms, p99.9 {p999:.3} ms; raw JetStream p50 {r50:.3} ms, p99 {r99:.3} ms; core request/reply p50 {c50:.3} ms, p99 {c99:.3} ms"
            );
        }
    }
    stop(ns).await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("tasks: bench");
        return;
    }
    // `cargo test --all-targets` builds and runs this too (without
    // `--bench`): only `cargo bench` measures.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmark skipped: run `cargo bench --bench tasks`");
        return;
    }
    let n = env_usize("BENCH_N", 20_000);
    let reps = env_usize("BENCH_REPS", 3);
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    // Profiling passes also read the server's message counters (`/varz`).
    let mport = free_port();
    let server = if only.is_empty() {
        NatsServer::start()
    } else {
        NatsServer::start_with(&["-m", &mport.to_string()])
    };
    println!("jetweave task benchmark: N = {n} tasks per pass, {reps} repetitions, one nats-server (default fsync), loopback, 2 cores; nodes are separate processes (concurrency 256)");
    let mut a = vec![];
    let mut b: Vec<Vec<f64>> = vec![vec![], vec![], vec![]];
    let node_counts = [1usize, 2, 4];
    let rates = [100.0, 1000.0, 5000.0];
    let mut lat: Vec<Vec<(f64, f64, f64)>> = vec![vec![], vec![], vec![]];
    let mut rtt = vec![];
    // Core request/reply paced at each latency rate: the floor at that rate.
    let mut paced: Vec<Vec<(f64, f64, f64)>> = vec![vec![], vec![], vec![]];
    // Raw JetStream at each latency rate (c'): the floor for a stored task.
    let mut raw_lat: Vec<Vec<(f64, f64, f64)>> = vec![vec![], vec![], vec![]];
    let mut ff = vec![];
    if only == "latency" {
        return latency_only(&server, reps).await;
    }
    if !only.is_empty() {
        return profile_one(&server, mport, &only, n, reps).await;
    }
    let mut bound = vec![];
    for pass in 0..reps {
        a.push(raw(&server, n, pass).await);
        bound.push(raw_with_result(&server, n, pass).await);
        for (k, &count) in node_counts.iter().enumerate() {
            let tag = pass * 10 + k;
            let ns = nodes(&server, count, tag).await;
            b[k].push(weave(&server, n, tag).await);
            if count == 1 {
                ff.push(weave_fire_and_forget(&server, n, tag).await);
                for (r, &rate) in rates.iter().enumerate() {
                    let m = ((rate * 2.0) as usize).clamp(200, 10_000);
                    lat[r].push(latency(&server, rate, m, tag * 10 + r).await);
                    paced[r].push(core_rtt(&server, m, Some(rate)).await);
                    raw_lat[r].push(raw_latency(&server, rate, m, tag * 10 + r).await);
                }
            }
            stop(ns).await;
        }
        rtt.push(core_rtt(&server, 2000, None).await);
        println!(
            "pass {pass}: raw {:.0} msg/s | raw with a stored result {:.0} | jetweave 1/2/4 nodes {:.0}/{:.0}/{:.0} tasks/s | p50 at 100/1000/5000 per s: {:.2}/{:.2}/{:.2} ms | core rtt p50 {:.3} ms",
            a[pass], bound[pass], b[0][pass], b[1][pass], b[2][pass], lat[0][pass].0, lat[1][pass].0, lat[2][pass].0, rtt[pass].0
        );
    }
    let show = |name: &str, v: &[f64], unit: &str| {
        let (lo, med, hi) = stats(v.to_vec());
        println!("{name:<44} median {med:>10.3} {unit}  (min {lo:.3}, max {hi:.3})");
    };
    println!();
    show("(a) raw JetStream work queue", &a, "msg/s");
    show("(a') raw with a stored result (the bound)", &bound, "msg/s");
    let br: Vec<f64> = bound.iter().zip(&a).map(|(b, a)| b / a).collect();
    show("    ratio (a')/(a)", &br, "");
    for (k, count) in node_counts.iter().enumerate() {
        show(
            &format!("(b) jetweave echo, {count} node(s)"),
            &b[k],
            "tasks/s",
        );
        let r: Vec<f64> = b[k].iter().zip(&a).map(|(b, a)| b / a).collect();
        show(&format!("    ratio (b)/(a), {count} node(s)"), &r, "");
    }
    show("(b') jetweave echo, ignore_result, 1 node", &ff, "tasks/s");
    let ffr: Vec<f64> = ff.iter().zip(&a).map(|(f, a)| f / a).collect();
    show("    ratio (b')/(a)", &ffr, "");
    for (r, rate) in rates.iter().enumerate() {
        let rows = [
            (format!("(c) latency {{q}} at {rate} tasks/s"), &lat[r], 3),
            (
                format!("(c') raw JetStream {{q}} at {rate}/s"),
                &raw_lat[r],
                2,
            ),
            (
                format!("    core req/reply {{q}} at {rate}/s"),
                &paced[r],
                2,
            ),
        ];
        for (label, passes, count) in rows {
            // The first `count` of p50, p99, p99.9.
            for (i, q) in ["p50", "p99", "p99.9"].iter().enumerate().take(count) {
                let v: Vec<f64> = passes.iter().map(|x| [x.0, x.1, x.2][i]).collect();
                show(&label.replace("{q}", q), &v, "ms");
            }
        }
    }
    let med = |v: &[f64]| stats(v.to_vec()).1;
    let report = serde_json::json!({
        "n": n, "reps": reps,
        "raw_msgs_per_s": med(&a),
        "raw_with_result_msgs_per_s": med(&bound),
        "raw_with_result_ratio": med(&br),
        "throughput": node_counts.iter().enumerate().map(|(k, c)| serde_json::json!({
            "nodes": c, "tasks_per_s": med(&b[k]),
            "ratio": med(&b[k].iter().zip(&a).map(|(b, a)| b / a).collect::<Vec<_>>()),
        })).collect::<Vec<_>>(),
        "latency": rates.iter().enumerate().map(|(r, rate)| serde_json::json!({
            "rate": rate,
            "p50_ms": med(&lat[r].iter().map(|x| x.0).collect::<Vec<_>>()),
            "p99_ms": med(&lat[r].iter().map(|x| x.1).collect::<Vec<_>>()),
            "p999_ms": med(&lat[r].iter().map(|x| x.2).collect::<Vec<_>>()),
            "raw_p50_ms": med(&raw_lat[r].iter().map(|x| x.0).collect::<Vec<_>>()),
            "raw_p99_ms": med(&raw_lat[r].iter().map(|x| x.1).collect::<Vec<_>>()),
            "core_p50_ms": med(&paced[r].iter().map(|x| x.0).collect::<Vec<_>>()),
            "core_p99_ms": med(&paced[r].iter().map(|x| x.1).collect::<Vec<_>>()),
        })).collect::<Vec<_>>(),
        "core_rtt_p50_ms": med(&rtt.iter().map(|x| x.0).collect::<Vec<_>>()),
        "fire_and_forget": {"nodes": 1, "tasks_per_s": med(&ff), "ratio": med(&ffr)},
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-results");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(
        dir.join("tasks.json"),
        serde_json::to_string_pretty(&report).unwrap_or_default(),
    );
    println!(
        "figures written to target/bench-results/tasks.json (scripts/bench-chart.sh draws them)"
    );
    show(
        "core NATS request/reply p50",
        &rtt.iter().map(|x| x.0).collect::<Vec<_>>(),
        "ms",
    );
    show(
        "core NATS request/reply p99",
        &rtt.iter().map(|x| x.1).collect::<Vec<_>>(),
        "ms",
    );
    show(
        "core NATS request/reply p99.9",
        &rtt.iter().map(|x| x.2).collect::<Vec<_>>(),
        "ms",
    );
}

/// (a''') `BENCH_ONLY=results`: the bound (a') run on jetweave's own
/// streams (`WEAVE_TASKS` queue `probe`, results in `WEAVE_RESULTS`), to
/// tell the streams' cost from the node's.
async fn raw_on_weave(server: &NatsServer, n: usize, pass: usize) -> f64 {
    let js = jetstream::new(server.client().await);
    let tasks = js.get_stream("WEAVE_TASKS").await.unwrap();
    let config = jetstream::consumer::pull::Config {
        durable_name: Some("probe".into()),
        filter_subject: "weave.tasks.probe.normal".into(),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        max_ack_pending: 256,
        ..Default::default()
    };
    let c = tasks.create_consumer(config).await.unwrap();
    let t0 = Instant::now();
    let subject = move |seq| format!("weave.results.probe{pass}-{seq}");
    let consumer = store_results(c, js.clone(), n, subject);
    let body = bytes::Bytes::from(r#"{"type":"echo","payload":{"n":1}}"#);
    let pjs = jetstream::new(server.client().await);
    let prefix = format!("probe{pass}-");
    publish_all(&pjs, "weave.tasks.probe.normal", n, &body, &prefix).await;
    consumer.await.unwrap();
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    tasks.delete_consumer("probe").await.unwrap();
    rate
}
