"""The one-line form of an error message."""

from mechaudit.errors import first_line


def test_first_line_of_an_exception_or_text() -> None:
    assert first_line(RuntimeError("  CUDA out of memory.\nTried to allocate 2 GiB")) == "CUDA out of memory."
    assert first_line(RuntimeError("")) == "RuntimeError"  # an exception without a message is named by its type
    assert first_line("ValueError: bad\ntrace") == "ValueError: bad"
    assert first_line(" \n ") == ""
