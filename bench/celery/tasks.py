"""The Celery side of the comparison: a no-op task, Redis broker and result
backend (what a Celery user would otherwise deploy)."""
import os

from celery import Celery

url = os.environ.get("CELERY_REDIS", "redis://127.0.0.1:6391/0")
app = Celery("bench", broker=url, backend=url)
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1, result_expires=3600)


@app.task
def noop(x):
    return x


@app.task
def slow(mark):
    """Writes this worker process's pid to `mark`, then works 1 s."""
    import time
    with open(mark + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(mark + ".tmp", mark)
    time.sleep(1)
    return "done"
