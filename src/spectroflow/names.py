"""Names that a file system allows but text does not: a local name that is not UTF-8 (an old
recorder's Latin-1 ``café.wav``), which Python reads with its undecodable bytes as lone
surrogates (``os.fsdecode``), and which every UTF-8 encoder refuses.

The report and the manifest keep such a name's bytes (``surrogateescape``); what must be UTF-8
(log records, Prefect's API, JSON for others) spells them ``\\xNN`` (:func:`printable`).
"""

from __future__ import annotations

import logging

#: The error policy of the text files the project writes and reads (reports, manifests): a
#: name that is not UTF-8 keeps its bytes.
TEXT_ERRORS = "surrogateescape"


def printable(text: str) -> str:
    """``text`` as valid UTF-8: the undecodable bytes of a name spelt ``\\\\xNN``; ``text``
    itself when it is valid already.

    Examples
    --------
    >>> printable("caf\\udce9.wav"), printable("café.wav")
    ('caf\\\\xe9.wav', 'café.wav')
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that is no undecodable byte
        raw = text.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "backslashreplace")


def sortable_bytes(value):
    """Text as bytes that sort as Python sorts the text (by code point) and keep the code points
    of a name's undecodable bytes (SQLite refuses them as text); anything else as it is."""
    return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value


def from_sortable_bytes(value):
    return value.decode("utf-8", "surrogatepass") if isinstance(value, bytes) else value


class PrintableNames(logging.Filter):
    """Spells a log record's message as valid UTF-8 (:func:`printable`): a handler that writes
    UTF-8 (a log file, Prefect's API, pytest-xdist's reports) fails on such a name."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        spelt = printable(message)
        if spelt is not message:
            record.msg, record.args = spelt, None
        return True


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)``, whose records name files printably (:class:`PrintableNames`)."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, PrintableNames) for f in logger.filters):
        logger.addFilter(PrintableNames())
    return logger
