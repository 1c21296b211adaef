"""The one error the result parsers raise."""

from __future__ import annotations

from vmharness.errors import VmharnessError


class ResultFormatError(VmharnessError, ValueError):
    """A results file that cannot be read as its format (malformed or refused XML, say).

    Raised by the strict parsers (`parse_junit`); `parse_results` turns it into an incomplete
    ParsedLog whose note is this message, so a bad file from the guest makes the run `fail`
    with a reason and never stops vmharness.
    """
