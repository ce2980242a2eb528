"""Batched serving: the requests that reach one worker at about the same time become one batched generation.

score.py's `run()` is called from the inference server's request threads (gunicorn `--threads`). Each call puts its
request on this worker's queue and waits; one batcher thread owns the model (torch module, ORT GenAI model and
tokenizer are never used from two threads) and loops:

1. take the oldest request, then whatever else arrives within `wait_s` of it (SLMOPS_BATCH_WAIT_MS, default 5),
   up to `max_batch` requests (SLMOPS_MAX_BATCH, default 8). It waits only when the previous batch had company
   (more than one request, or requests queued behind it): a lone request on an idle server starts at once;
2. prepare each request alone: render chat `messages`, encode, check prompt + max_new_tokens against the context.
   A request that fails here gets its own 400 (or error); the others go on;
3. batch the oldest request's temperature and adapter (one temperature and one adapter per generation call: greedy
   requests for the same adapter batch together; a multi-adapter model switches adapters between calls), oldest
   first, as long as the batch's widest prompt + largest max_new_tokens fits the context; the rest wait
   for the next round, ahead of newer requests;
4. one `model.complete(prompts, max_new_tokens, temperature)` call - `generation.torch_completions` /
   `ort_completions`, each prompt with its own max_new_tokens (a row stops at its limit or its end token) - and
   each request gets its own Completion, as soon as it is ready when the call runs its prompts one at a time
   (ORT GenAI's prompt cache), else when the call returns. If the call raises, its unanswered requests are run
   again one at a time, so only the one that fails gets the error.

Greedy answers equal the one-at-a-time answers (tests/serving/test_batching.py) up to the floating-point
reduction order of a wider matrix product, which evaluate's own batches share (docs/serving.md, "Batched serving").

`max_batch` 1 is the unbatched server: `run()` then generates in the calling thread under a lock, one request at a
time, as before batching existed (the A/B baseline of bench/serving_throughput.py).

`plan()` is the rule for workers and threads from the cores and the model's memory.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field

logger = logging.getLogger("azmlinfsrv.slmops")

DEFAULT_MAX_BATCH = 8
DEFAULT_WAIT_MS = 5.0
CORES_PER_WORKER = 8     # plan(): cores one worker's batches are given before a second worker pays (to be measured)
MEMORY_SHARE = 0.75      # plan(): the share of memory the model copies may take
OVERHEAD = 1.25          # plan(): a loaded copy + its batch's KV cache and activations, as a multiple of weights


class Rejected(Exception):
    """A request this worker cannot generate for (e.g. its prompt does not fit the context): a 400 for it alone."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass
class Request:
    prompt: str | None
    messages: list | None
    max_new_tokens: int
    temperature: float
    adapter: str | None = None   # the adapter of a multi-adapter model (slmops.adapters); None: the one model
    arrived: float = field(default_factory=time.monotonic)
    text: str = ""               # the prompt to generate from (set by prepare)
    n_prompt: int = 0            # its token count (BOS rule applied)
    result: object = None        # a Completion
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def finish(self, result=None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()


def prepare(model, req: Request) -> None:
    """Render and encode one request and check it against the model's context; Rejected when it cannot run."""
    req.text = model.render_chat(req.messages) if req.messages is not None else req.prompt
    req.n_prompt = len(model.encode(req.text))
    if not req.n_prompt:
        raise Rejected(["the prompt encodes to zero tokens"])
    if req.n_prompt + req.max_new_tokens > model.context_length:
        raise Rejected([f"prompt ({req.n_prompt} tokens) + max_new_tokens ({req.max_new_tokens}) exceed the "
                        f"model's context of {model.context_length} tokens; shorten the prompt or lower "
                        "max_new_tokens"])


def take_batch(pending: list[Request], max_batch: int, context_length: int) -> list[Request]:
    """The next batch out of `pending` (oldest first, all prepared): the oldest request's temperature and adapter,
    in arrival order, while the widest prompt + the largest max_new_tokens fits the context. Removes them from
    `pending`."""
    temperature, adapter = pending[0].temperature, pending[0].adapter
    batch, width, longest = [], 0, 0
    for req in pending:
        if len(batch) == max_batch:
            break
        if req.temperature != temperature or req.adapter != adapter:
            continue
        if batch and max(width, req.n_prompt) + max(longest, req.max_new_tokens) > context_length:
            continue
        batch.append(req)
        width, longest = max(width, req.n_prompt), max(longest, req.max_new_tokens)
    taken = {id(r) for r in batch}
    pending[:] = [r for r in pending if id(r) not in taken]
    return batch


def generate(model, batch: list[Request]) -> int:
    """One batched generation for `batch`; when it raises, each request not yet answered again on its own.
    A request is answered as soon as its completion is ready (`on_done`: ORT GenAI's prompt cache runs a batch one
    request at a time), else when the call returns. Returns the number of generation calls made."""
    # every request of a batch has the same adapter (take_batch); a model without adapters never gets the argument
    adapter = {"adapter": batch[0].adapter} if batch[0].adapter is not None else {}
    try:
        done = model.complete([r.text for r in batch], [r.max_new_tokens for r in batch], batch[0].temperature,
                              on_done=lambda i, completion: batch[i].finish(completion), **adapter)
    except Exception as exc:
        if len(batch) == 1:
            batch[0].finish(error=exc)
            return 1
        rest = [req for req in batch if not req.done.is_set()]
        logger.warning("slmops: a batch of %d failed (%s: %s); running its %d unanswered requests one at a time",
                       len(batch), type(exc).__name__, exc, len(rest))
        for req in rest:
            generate(model, [req])
        return 1 + len(rest)
    for req, completion in zip(batch, done):
        if not req.done.is_set():
            req.finish(completion)
    return 1


class Batcher:
    """The queue and the thread that turn concurrent `submit()` calls into batched generations (module docstring).

    The thread starts on the first submit in each process, so a model loaded before gunicorn forks (preload) still
    gets a batcher thread in every worker.
    """

    def __init__(self, model, *, max_batch: int = DEFAULT_MAX_BATCH, wait_s: float = DEFAULT_WAIT_MS / 1000):
        if max_batch < 1 or wait_s < 0:
            raise ValueError(f"max_batch must be >= 1 and wait_s >= 0, got {max_batch} and {wait_s}")
        self.model = model
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.stats = {"requests": 0, "batches": 0, "calls": 0, "largest": 0}
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()   # max_batch 1: one request at a time in the caller's thread
        self._thread: threading.Thread | None = None
        self._pid = None
        self._closed = False

    def submit(self, prompt: str | None, messages: list | None, max_new_tokens: int, temperature: float,
               adapter: str | None = None):
        """The Completion for one request (`adapter`: which adapter of a multi-adapter model answers it); raises
        Rejected (a 400 for this request) or the generation's error."""
        req = Request(prompt, messages, max_new_tokens, float(temperature), adapter)
        if self.max_batch == 1:
            with self._lock:
                prepare(self.model, req)
                self._count([req])
                generate(self.model, [req])
        else:
            self._ensure_thread()
            self._queue.put(req)
            while not req.done.wait(1.0):
                if not self._thread.is_alive():
                    raise RuntimeError("the batcher thread stopped; restart the server")
        if req.error is not None:
            raise req.error
        return req.result

    def close(self) -> None:
        """Stop the thread (requests still queued are failed); for tests and a second init()."""
        self._closed = True
        self._queue.put(None)

    # -------------------------------------------------------------------------------------------- the thread

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the batcher was closed")
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._loop, name="slmops-batcher", daemon=True)
                self._thread.start()

    def _count(self, batch: list[Request]) -> None:
        self.stats["requests"] += len(batch)
        self.stats["batches"] += 1
        self.stats["largest"] = max(self.stats["largest"], len(batch))

    def _gather(self, pending: list[Request], company: bool) -> bool:
        """Move requests from the queue into `pending` (prepared; rejected ones answered): block for the first
        when nothing is pending, then wait up to wait_s after the oldest arrived when the last batch had company.
        False once closed."""
        fresh = []
        if not pending:
            req = self._queue.get()
            if req is None:
                return False
            fresh.append(req)
        oldest = (pending or fresh)[0].arrived
        deadline = oldest + self.wait_s if company else 0.0
        while len(pending) + len(fresh) < self.max_batch:
            timeout = deadline - time.monotonic()
            try:
                req = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if req is None:
                self._queue.put(None)  # seen again after this round's requests are answered
                break
            fresh.append(req)
        for req in fresh:
            try:
                prepare(self.model, req)
            except BaseException as exc:  # Rejected, or a chat template that fails on these messages
                req.finish(error=exc)
            else:
                pending.append(req)
        return True

    def _loop(self) -> None:
        pending: list[Request] = []
        company = False
        while True:
            batch: list[Request] = []
            try:
                if not self._gather(pending, company):
                    break
                if not pending:
                    continue
                batch = take_batch(pending, self.max_batch, self.model.context_length)
                self._count(batch)
                self.stats["calls"] += generate(self.model, batch)
                company = len(batch) > 1 or bool(pending) or not self._queue.empty()
            except BaseException as exc:  # a bug here must not leave callers waiting forever
                logger.exception("slmops: batcher error")
                for req in batch or list(pending):
                    if not req.done.is_set():
                        req.finish(error=exc)
                if not batch:
                    pending.clear()
        for req in pending:
            req.finish(error=RuntimeError("the server is shutting down"))
        while True:
            try:
                req = self._queue.get_nowait()
            except queue.Empty:
                break
            if req is not None:
                req.finish(error=RuntimeError("the server is shutting down"))


def plan(cores: int, memory_bytes: int, model_bytes: int, *, gpu: bool = False,
         max_batch: int = DEFAULT_MAX_BATCH) -> dict:
    """Workers, request threads per worker and compute threads per worker for a machine and a model.

    - workers: one per GPU; on CPU one per CORES_PER_WORKER cores (a batch of a small model keeps about that many
      busy; past it, a second worker with its own batches uses the cores better), but never more copies than fit
      in MEMORY_SHARE of the memory (a copy: weights x OVERHEAD for its batch's KV cache and activations); at
      least 1 (a model that does not fit even once fails to load, which says so).
    - threads: 2 x max_batch per worker - one batch generating while the next one gathers; more threads only
      queue inside the worker instead of in the listen backlog.
    - compute_threads: the cores divided among the workers (torch intra-op / ORT intra-op threads).
    """
    cores = max(1, cores)
    fit = int(memory_bytes * MEMORY_SHARE // max(1, int(model_bytes * OVERHEAD)))
    workers = 1 if gpu else max(1, min(cores // CORES_PER_WORKER, fit))
    return {"workers": workers, "threads": 2 * max_batch, "compute_threads": max(1, cores // workers)}
