"""The command lines' shared pieces: one-line argparse errors, the finite-number and endpoint-URL checks."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pipeline.cli import OneLineParser, check_finite, check_http_url


@dataclass
class _Example:
    name: str = "x"
    count: int = 1
    rate: float = 0.5
    pair: tuple[float, float] = (1.0, 2.0)


def test_check_finite_names_the_first_bad_float_field():
    check_finite(_Example())
    with pytest.raises(ValueError, match=r"^bad rate nan: expected a finite number$"):
        check_finite(_Example(rate=float("nan")))
    with pytest.raises(ValueError, match=r"^bad pair -inf: expected a finite number$"):
        check_finite(_Example(pair=(1.0, float("-inf"))))


@pytest.mark.parametrize("url", ["http://127.0.0.1:9000", "https://s3.eu-west-1.amazonaws.com", "http://[::1]:9000/",
                                 None])
def test_http_urls_pass(url):
    check_http_url("s3_endpoint", url)


@pytest.mark.parametrize("url", ["::not a url::", "127.0.0.1:9000", "ftp://host", "http://", "http://host:port",
                                 "http://host:0", "http://[::1", ""])
def test_anything_else_is_refused_in_one_line(url):
    with pytest.raises(ValueError) as info:
        check_http_url("s3_endpoint", url)
    assert str(info.value).startswith(f"bad s3_endpoint {url!r}: expected an http:// or https:// URL")


def test_parser_errors_are_one_line_with_exit_code_2(capsys):
    parser = OneLineParser(prog="python -m tool")
    parser.add_argument("--n", type=int, required=True)
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--n", "x"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "error: argument --n: invalid int value: 'x' (see python -m tool --help)\n"
