"""One lock for loading models in a process that serves requests in threads.

transformers resolves its classes lazily on first use, and two threads resolving at once can fail with "cannot
import name 'AutoModel' from 'transformers'" (seen in the web atlas: a search's first label embedding beside an
image page's first load of the diffusion model). The two loads the web atlas makes in its threads hold this lock,
`load_model` and the label embedder, so they run one at a time; a process loads each once, so the wait is rare.
Loads that only run in a command's single thread (annotators, the CLIP judge) do not take it.
"""

from __future__ import annotations

import threading

LOADING = threading.RLock()
