"""Who the request being served is (its API key, else its address's group), for sharing the decoding budget and the
models' time between clients (`app.memory_budget.MemoryBudget`, `app.batching.MicroBatcher`).

Set by the upload middleware for the request's task (`UploadLimitMiddleware`), and read where the request waits its
turn. Why: first come, first served lets one key that keeps full batches in flight make another client's one-slice
request wait 17 s instead of 0.03 s. Outside a request (the DICOM node, pacs-sync, the CLI) it
is "", one client.
"""

from __future__ import annotations

from contextvars import ContextVar

current_client: ContextVar[str] = ContextVar("current_client", default="")
