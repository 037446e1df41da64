"""The shared way a subcommand refuses bad input: UsageError and the argument checks."""
import pytest

from initlab.lab import usage
from initlab.lab.usage import UsageError


def test_parser_errors_are_one_line_with_status_2(capsys):
    p = usage.Parser(prog="initlab x")
    p.add_argument("--n", type=int)
    with pytest.raises(SystemExit) as info:
        p.parse_args(["--n", "two"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("initlab x: error: argument --n: invalid int")
    sub = p.add_subparsers(dest="cmd").add_parser("y")  # subcommands inherit the class
    assert isinstance(sub, usage.Parser)


@pytest.mark.parametrize("check,value,message", [
    (usage.at_least, 0, "--f must be an integer >= 1, got 0"),
    (usage.positive, 0.0, "--f must be a positive number, got 0.0"),
    (usage.positive, float("nan"), "--f must be a positive number"),
    (usage.non_negative, -1e-3, "--f must be a number >= 0"),
    (usage.fraction, 1.0, "--f must lie in [0, 1)"),
])
def test_number_checks_name_the_flag_and_value(check, value, message):
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)")):
        check("--f", value)
    check("--f", None)  # not given: nothing to check


def test_number_checks_pass_good_values():
    usage.at_least("--f", 1)
    usage.positive("--f", 1e-9)
    usage.non_negative("--f", 0.0)
    usage.fraction("--f", 0.0)


def test_choices_suggest_the_closest():
    with pytest.raises(UsageError, match=r"'lsvu' is unknown \(did you mean 'lsuv'\?\); use one"):
        usage.one_of("--m", "lsvu", ["gradinit", "lsuv"])
    usage.one_of("--m", "lsuv", ["gradinit", "lsuv"])


def test_folders(tmp_path):
    usage.writable_dir("--out", tmp_path / "a" / "b")  # created, parents too
    assert (tmp_path / "a" / "b").is_dir()
    (tmp_path / "f").write_text("")
    with pytest.raises(UsageError, match="is a file"):
        usage.writable_dir("--out", tmp_path / "f")
    with pytest.raises(UsageError, match="cannot be created"):
        usage.writable_dir("--out", tmp_path / "f" / "sub")
    with pytest.raises(UsageError, match="is not a folder"):
        usage.existing_dir("--data-dir", tmp_path / "missing")
    usage.existing_dir("--data-dir", tmp_path)


def test_devices():
    usage.device("--device", "cpu")
    with pytest.raises(UsageError, match="is not a device"):
        usage.device("--device", "gpu0")


def test_reraise_names_the_flag():
    with pytest.raises(UsageError, match="^--x: unknown thing$"):
        usage.reraise("--x", KeyError("unknown thing"))
