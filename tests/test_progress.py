"""The shared progress bar: counts, status text and resume offset show; disabled is silent."""

from __future__ import annotations

from duomind.progress import progress_bar


def test_bar_shows_count_and_status(capsys):
    with progress_bar("work", 5, completed=2, unit="rec") as advance:
        advance()
        advance(2, info="loss 1.234")
    out = capsys.readouterr().out
    assert "work" in out and "5/5" in out and "loss 1.234" in out


def test_disabled_or_empty_bar_is_silent(capsys):
    for kwargs in ({"enabled": False}, {"total": 0}):
        with progress_bar("quiet", **{"total": 3, **kwargs}) as advance:
            advance()
            advance(1, info="x")
    assert capsys.readouterr().out == ""
