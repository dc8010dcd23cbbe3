"""What deploykit does to a caller's process-wide warning filters while it calls into the libraries."""

from __future__ import annotations

import warnings

from deploykit._quiet import warnings_ignored


def test_overlapping_ignores_leave_the_callers_filters_as_they_were():
    """Two converts in threads opened and closed warnings.catch_warnings() crosswise: the second put back
    a copy holding the first one's "ignore everything", and every later warning of the caller was silenced."""
    before = list(warnings.filters)
    first, second = warnings_ignored(), warnings_ignored(".*pruned in place", UserWarning)
    first.__enter__()
    second.__enter__()
    warnings.filterwarnings("error", message="the caller's own")  # added meanwhile: stays
    first.__exit__(None, None, None)
    second.__exit__(None, None, None)
    assert warnings.filters[1:] == before and warnings.filters[0][0] == "error"
    warnings.filters.pop(0)

    # a library's catch_warnings that closes after ours puts our filter back; the next of ours removes it
    with warnings_ignored():
        library = warnings.catch_warnings()
        library.__enter__()
    library.__exit__(None, None, None)
    with warnings_ignored():
        pass
    assert warnings.filters == before


def test_ignored_only_while_open_and_only_what_it_names():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with warnings_ignored(".*pruned in place", UserWarning):
            warnings.warn("the model was pruned in place")
            warnings.warn("another warning")
        with warnings_ignored():
            warnings.warn("anything", DeprecationWarning)
        warnings.warn("after")
    assert [str(w.message) for w in seen] == ["another warning", "after"]
