#!/usr/bin/env python3
"""A jetweave worker written only against subjects.md, with nothing but the
official NATS client (nats-py). It proves the protocol is the product:

- registers in discovery: its NodeInfo under its node id in the KV bucket
  `weave-nodes`, written with a per-key TTL (header `Nats-TTL`) and
  refreshed at every heartbeat, deleted on exit;
- heartbeats on `weave.node.<id>.heartbeat`;
- pulls from the `default` queue through the shared durable consumers
  `tasks_default_<priority>`, highest priority first, one task at a time;
- runs `echo` (result = payload), acks, and stores one terminal result on
  `weave.results.<task_id>` with `Nats-Expected-Last-Subject-Sequence: 0`.

    python3 examples/python_worker.py --nats-url nats://127.0.0.1:4222 --node-id py1
"""
import argparse
import asyncio
import json
import os
import signal
import sys
import socket
from datetime import datetime, timezone

import nats
from nats.errors import TimeoutError as NatsTimeout

PRIORITIES = ["critical", "high", "normal", "low"]


def now():
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Worker:
    def __init__(self, args):
        self.args = args
        self.p = args.prefix
        self.node_id = args.node_id
        self.started_at = now()
        self.completed = 0
        self.failed = 0
        self.active = 0
        self.stop = asyncio.Event()

    def info(self):
        return {
            "node_id": self.node_id, "role": "worker", "hostname": socket.gethostname(),
            "pid": os.getpid(), "url": None, "queues": ["default"], "capabilities": [],
            "max_concurrency": 1, "health": "healthy", "active_tasks": self.active,
            "started_at": self.started_at, "last_heartbeat_at": now(),
            "metadata": {"handlers": ["echo"], "language": "python",
                         "completed": self.completed, "failed": self.failed},
        }

    async def register(self):
        # A KV put is a publish to $KV.<bucket>.<key>; Nats-TTL gives the
        # entry its own TTL so it vanishes if this process dies.
        await self.js.publish(f"$KV.{self.p}-nodes.{self.node_id}", json.dumps(self.info()).encode(),
                              headers={"Nats-TTL": f"{self.args.node_ttl}s"})

    async def heartbeat_loop(self):
        while not self.stop.is_set():
            hb = {"node_id": self.node_id, "health": "healthy", "active_tasks": self.active,
                  "max_concurrency": 1, "queues": ["default"], "completed": self.completed,
                  "failed": self.failed, "last_heartbeat_at": now(), "metadata": {}}
            await self.nc.publish(f"{self.p}.node.{self.node_id}.heartbeat", json.dumps(hb).encode())
            await self.register()
            try:
                await asyncio.wait_for(self.stop.wait(), timeout=self.args.heartbeat_interval)
            except asyncio.TimeoutError:
                pass

    async def store_result(self, task_id, status, result, error, attempts, started_at, duration):
        body = {"task_id": task_id, "status": status, "result": result, "error": error,
                "attempts": attempts, "node_id": self.node_id, "started_at": started_at,
                "finished_at": now(), "duration_s": duration}
        try:
            await self.js.publish(f"{self.p}.results.{task_id}", json.dumps(body).encode(),
                                  headers={"Nats-Expected-Last-Subject-Sequence": "0"})
        except nats.js.errors.APIError as e:
            if getattr(e, "err_code", None) != 10071:  # a result exists already: fine
                raise

    async def handle(self, msg):
        meta = msg.metadata
        attempt = meta.num_delivered
        try:
            env = json.loads(msg.data)
            task_type = env["type"]
        except (ValueError, KeyError, TypeError):
            await msg.nak(delay=1)  # leave malformed messages to a Rust node's dead-lettering
            return
        task_id = env.get("id") or (msg.headers or {}).get("Nats-Msg-Id") or f"{self.p.upper()}_TASKS-{meta.sequence.stream}"
        if task_type != "echo":
            await msg.nak(delay=0.5)  # another node has this handler
            return
        self.active += 1
        t0 = asyncio.get_running_loop().time()
        started = now()
        result = env.get("payload")
        self.active -= 1
        self.completed += 1
        await self.store_result(task_id, "completed", result, None, attempt, started,
                                asyncio.get_running_loop().time() - t0)
        await msg.ack()

    async def work_loop(self):
        subs = []
        for prio in PRIORITIES:
            subs.append(await self.js.pull_subscribe_bind(
                durable=f"tasks_default_{prio}", stream=f"{self.p.upper()}_TASKS"))
        while not self.stop.is_set():
            got = False
            for sub in subs:  # highest priority first
                try:
                    msgs = await sub.fetch(batch=1, timeout=0.05)
                except NatsTimeout:
                    continue
                for m in msgs:
                    await self.handle(m)
                    got = True
                if got:
                    break
            if not got:
                await asyncio.sleep(0.05)

    async def resources_ready(self):
        """The task stream, its four consumers of `default` and the nodes
        bucket: jetweave nodes and coordinators create them."""
        try:
            for prio in PRIORITIES:
                await self.js.consumer_info(f"{self.p.upper()}_TASKS", f"tasks_default_{prio}")
            await self.js.stream_info(f"KV_{self.p}-nodes")
            return True
        except (nats.js.errors.APIError, nats.js.errors.NoStreamResponseError,
                nats.errors.TimeoutError, nats.errors.NoRespondersError):
            return False

    async def wait_for_resources(self):
        said = False
        while not self.stop.is_set() and not await self.resources_ready():
            if not said:
                print(f"waiting for jetweave's streams on {self.args.nats_url} "
                      "(start a jetweave node or coordinator)", file=sys.stderr, flush=True)
                said = True
            await asyncio.sleep(0.5)

    async def run(self):
        # --nats-url may name several servers of a cluster, comma separated.
        servers = [u.strip() for u in self.args.nats_url.split(",") if u.strip()]
        self.nc = await nats.connect(servers, name=f"python worker {self.node_id}")
        self.js = self.nc.jetstream()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        await self.wait_for_resources()
        if self.stop.is_set():
            await self.nc.close()
            return
        await self.register()
        print(f"python worker {self.node_id} ready", flush=True)
        tasks = [asyncio.create_task(self.heartbeat_loop()), asyncio.create_task(self.work_loop())]
        await self.stop.wait()
        for t in tasks:
            t.cancel()
        # Clean exit: delete the discovery entry at once (a KV delete marker).
        await self.js.publish(f"$KV.{self.p}-nodes.{self.node_id}", b"", headers={"KV-Operation": "DEL"})
        await self.nc.flush()
        await self.nc.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nats-url", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    ap.add_argument("--node-id", required=True)
    ap.add_argument("--prefix", default=os.environ.get("JETWEAVE_PREFIX", "weave"))
    ap.add_argument("--heartbeat-interval", type=float, default=1.0)
    ap.add_argument("--node-ttl", type=int, default=5)
    asyncio.run(Worker(ap.parse_args()).run())


if __name__ == "__main__":
    main()
