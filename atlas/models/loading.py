"""One lock for loading models in a process that serves requests in threads.

transformers resolves its classes lazily on first use, and two threads resolving at once can fail with "cannot
import name 'AutoModel' from 'transformers'" (seen in the web atlas: a search's first label embedding beside an
image page's first load of the diffusion model). Every model load in atlas holds this lock, so loads in one process
run one at a time; a process loads each model once, so the wait is rare.
"""

from __future__ import annotations

import threading

LOADING = threading.RLock()
