"""Search: concepts by label, by name, by the meaning of labels and names, or by the concepts a prompt activates."""

from atlas.lazy import lazy_face

_NAMES = dict.fromkeys(("SearchResult", "search_concepts", "resolve_text", "Resolution", "Match",
                        "by_prompt_activation"), "atlas.search.search")
__all__ = sorted(_NAMES)
__getattr__, __dir__ = lazy_face(__name__, _NAMES)
