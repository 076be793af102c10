"""The verdict the fuzz suites give one command line (wtext.train's or wtext.experiments' main):

    clear    it stops with an error whose last line holds every expected word (and the expected exit status, when
             one is given; a single line, when one_line)
    unclear  it stops, but the message does not say so, the status is another, or a traceback is printed
    crash    an exception escapes the command instead of an error message
    wrong    it exits 0 although the input is bad
"""


def classify_command(main, argv, words, capsys, status: int | None = None, one_line: bool = False) -> tuple[str, str]:
    """(verdict, the message's last line or what escaped) of `main(argv)`."""
    capsys.readouterr()  # output of earlier calls is not this command's
    try:
        code = main(argv)
    except SystemExit as exit:
        code = exit.code
    except BaseException as error:  # noqa: BLE001 (anything escaping main is the finding)
        return "crash", f"{type(error).__name__}: {error}"[:300]
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    if code == 0:
        return "wrong", "exit 0"
    if ((status is not None and code != status) or (one_line and len(lines) != 1) or "Traceback" in err
            or not all(word in last for word in words)):
        return "unclear", f"exit {code}: {last}"[:300]
    return "clear", last[:300]
