"""`--config FILE.toml` and MFVAN_* environment variables for the live commands: the
command line wins over the environment, which wins over the file; mistakes are refused
with one line."""

import subprocess
import sys

import pytest
from helpers import REPO

from mfvan.deploy import cli
from mfvan.deploy.runtime import config


def _parse(argv, toml=None, environ=None, tmp_path=None):
    path = None
    if toml is not None:
        path = tmp_path / "mfvan.toml"
        path.write_text(toml)
    parser = cli.build_parser()
    lists = config.apply(config.subparser(parser, argv[0]), path, environ or {})
    args = parser.parse_args(argv)
    config.fill(args, lists)
    return args


def test_file_then_environment_then_command_line(tmp_path):
    toml = 'source = ["rtsp://cam1/s", "rtsp://cam2/s"]\nbackend = "torch"\nmax-batch = 4\n'
    args = _parse(["run"], toml, {"MFVAN_MAX_BATCH": "16"}, tmp_path)
    assert args.source == ["rtsp://cam1/s", "rtsp://cam2/s"], "required flag given by the file"
    assert args.backend == "torch" and args.max_batch == 16, "the environment beats the file"
    args = _parse(
        ["run", "--source", "/dev/video0", "--max-batch", "2"],
        toml,
        {"MFVAN_MAX_BATCH": "16", "MFVAN_INSECURE": "yes"},
        tmp_path,
    )
    assert args.source == ["/dev/video0"], "the command line replaces the file's list"
    assert args.max_batch == 2 and args.insecure is True
    args = _parse(["spot", "--in", "ipc:///tmp/f"], None, {"MFVAN_OUT": "ipc:///tmp/p"}, tmp_path)
    assert args.out == "ipc:///tmp/p" and args.metrics_port == 9102


def test_the_shipped_example_names_only_real_flags():
    parser = cli.build_parser()
    values = config.load_file(
        REPO / "deploy" / "ops" / "mfvan.toml", config.subparser(parser, "run")
    )
    assert values["source"] == ["door=env:CAMERA_DOOR_URL"], "the disabled camera is left out"
    assert values["metrics_base_port"] == 9101


def test_cameras_are_named_tables_after_any_source_list(tmp_path):
    toml = """source = ["rtsp://10.0.0.9/s"]

[cameras.door]
source = "rtsp://10.0.0.5/Streaming/Channels/101"
fps = 25

[cameras.desk]
source = "/dev/video0"
enabled = false

[cameras.hall]
source = "env:HALL_URL"
realtime = true
"""
    args = _parse(["run"], toml, {}, tmp_path)
    assert args.source == [
        "rtsp://10.0.0.9/s",
        "door=rtsp://10.0.0.5/Streaming/Channels/101",
        "hall=env:HALL_URL",
    ]
    assert args.camera_options == {"door": {"fps": 25}, "hall": {"realtime": True}}
    args = _parse(["run", "--source", "door=x.mp4"], toml, {}, tmp_path)
    assert args.source == ["door=x.mp4"], "the command line replaces the file's cameras"


@pytest.mark.parametrize(
    "toml, env, words",
    [
        ("sources = ['x']\n", {}, "unknown key 'sources'"),
        ("source = 'x'\n", {}, "expected a list"),
        ("source = ['x']\nbackend = 'tensorflow'\n", {}, "'tensorflow' is not one of"),
        ("source = ['x']\n", {"MFVAN_METRICS_BASE_PORT": "lots"}, "MFVAN_METRICS_BASE_PORT"),
        ("source = ['x'\n", {}, "is not valid TOML"),
        ("[cameras.door]\nurl = 'x'\n", {}, "cameras.door: unknown key 'url'"),
        ("[cameras.door]\nfps = 30\n", {}, "cameras.door: no source"),
        ("[cameras.door]\nsource = 'x'\nfps = 0\n", {}, "fps 0 is not in"),
        ("[cameras.door]\nsource = 'x'\nenabled = 'no'\n", {}, "enabled cannot be 'no'"),
        ("[cameras.'front door']\nsource = 'x'\n", {}, "a camera name is letters"),
        ("cameras = 'x'\n", {}, "expected [cameras.NAME] tables"),
        (b"source = ['caf\xe9.mp4']\n", {}, "is not UTF-8"),  # Latin-1: was a traceback
    ],
)
def test_mistakes_are_one_clear_line(toml, env, words, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_bytes(toml if isinstance(toml, bytes) else toml.encode())
    run = subprocess.run(
        [sys.executable, "-m", "mfvan.deploy.cli", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **env},
        timeout=60,
    )
    assert run.returncode == 2
    assert words in run.stderr and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
