"""The command lines' shared pieces: typed config to flags, files and params; one-line errors; value checks."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from pipeline import cli
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


# ---- typed config -> flags, files, params ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Net(cli.Checked):
    """The net."""

    depth: int = cli.option(11, "layers", choices=(11, 13, 16, 19))
    width: float = cli.option(1.0, "channel multiplier")
    source: str | None = cli.option(None, "weights to start from")

    def check(self) -> None:
        cli.require(self.width > 0, "width", self.width, "a positive number")


@dataclass(frozen=True)
class _Data(cli.Checked):
    """The data."""

    shards: tuple[str, ...] = cli.option((), "shard URIs, repeat the flag", repeat=True)
    scales: tuple[int, ...] = cli.option((256,), "test scales")
    box: tuple[int, int] = cli.option((0, 0), "top left")
    flip: bool = cli.option(True, "flip")
    span: str = cli.option("1", "a span, older spelling --range", aliases=("--range",), nargs="+",
                           parse=lambda v: "-".join(v) if isinstance(v, list) else v)


@dataclass(frozen=True)
class _Job:
    net: _Net = field(default_factory=_Net)
    data: _Data = field(default_factory=_Data)


def test_one_flag_per_field_of_every_kind():
    argv = ["--depth", "16", "--width", "0.5", "--source", "none", "--shards", "a", "--shards", "b", "--scales", "224",
            "384", "--box", "3", "4", "--no-flip", "--range", "2", "5"]
    job = cli.parse(_Job, argv)
    assert job == _Job(_Net(16, 0.5, None), _Data(("a", "b"), (224, 384), (3, 4), False, "2-5"))
    assert cli.parse(_Job, []) == _Job()
    assert list(cli.leaves(_Job)) == ["depth", "width", "source", "shards", "scales", "box", "flip", "span"]


@pytest.mark.parametrize("argv, line", [
    (["--depth", "12"], "argument --depth: invalid choice: 12 (choose from 11, 13, 16, 19)"),
    (["--width", "-1"], "bad width -1.0: expected a positive number"),
    (["--width", "nan"], "bad width nan: expected a finite number"),
    (["--box", "1"], "argument --box: expected 2 arguments"),
    (["--scales", "x"], "argument --scales: invalid int value: 'x'"),
])
def test_every_refusal_is_one_line_with_exit_code_2(capsys, argv, line):
    with pytest.raises(SystemExit) as exit_:
        cli.parse(_Job, argv, prog="tool")
    assert exit_.value.code == 2
    assert capsys.readouterr().err == f"error: {line} (see tool --help)\n"


def test_files_in_every_form_and_the_dict_round_trip(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("net:\n  width: 5e-1\n  source: none\ndata.scales: [224]\nbox: [1, 2]\nold_name: 3\n")
    flat = cli.load_file(_Job, path, legacy={"old_name": "data"})
    assert flat == {"width": 0.5, "source": None, "scales": [224], "box": [1, 2], "old_name": 3}
    flat.pop("old_name")
    job = cli.build(_Job, flat)
    stored = json.loads(json.dumps(cli.to_dict(job)))
    assert stored["data"]["box"] == [1, 2] and cli.build(_Job, cli.flatten(_Job, stored, "stored")) == job
    with pytest.raises(ValueError, match="unknown field 'depth' in section data"):
        cli.flatten(_Job, {"data": {"depth": 11}}, "file")


def test_params_are_section_dot_field_strings():
    params = cli.to_params(cli.parse(_Job, ["--shards", "a", "--shards", "b", "--source", "x" * 600]))
    assert params["data.shards"] == "a,b" and params["net.source"].endswith("...")
    assert params["data.flip"] == "True" and params["net.width"] == "1.0"
    assert all(len(v) <= cli.MAX_PARAM_VALUE for v in params.values())
