"""taskiq with its NATS JetStream broker (pull-based) and NATS result
backend (object store): the closest peer to jetweave, Python on the same
NATS server. NATS_URL picks the server."""
import os

from taskiq_nats import NATSObjectStoreResultBackend, PullBasedJetStreamBroker

url = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
broker = PullBasedJetStreamBroker(url, stream_name="taskiq_bench", durable="taskiq_bench")
broker = broker.with_result_backend(NATSObjectStoreResultBackend(url, bucket_name="taskiq_bench"))


@broker.task
async def noop(i: int) -> int:
    return i


@broker.task
async def slow(mark: str) -> str:
    """Writes this worker process's pid to `mark`, then works 1 s."""
    import asyncio
    with open(mark + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(mark + ".tmp", mark)
    await asyncio.sleep(1)
    return "done"
