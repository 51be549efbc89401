"""Commands the project prints or runs name paths as Hydra overrides: they must parse back to the same path, also for
a sweep's job folders (`0_experiment=blog,model=lsgan,seed=0`: '=' and ',' break Hydra's grammar unquoted)."""

import shlex
import sys

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from retina_gans.overrides import override, quote_existing_paths, run_cli, unreadable_override
from retina_gans.train import resume_command

PATHS = [
    "/runs/plain/checkpoints/last.ckpt",
    "/logs/compare/x/blog/0_experiment=blog,model=lsgan,seed=0/checkpoints/last.ckpt",
    "/a folder/it's [1,2]/last.ckpt",
    "C:\\runs\\a=b\\last.ckpt",
]


@pytest.mark.parametrize("path", PATHS)
def test_an_override_parses_back_to_the_same_value(path):
    parsed = OverridesParser.create().parse_override(override("ckpt_path", path))
    assert parsed.key_or_group == "ckpt_path" and parsed.value() == path


def test_plain_paths_stay_unquoted():
    assert override("ckpt_path", PATHS[0]) == f"ckpt_path={PATHS[0]}"


def test_the_resume_command_of_a_sweep_job_names_its_checkpoint_correctly():
    run = "/logs/compare/x/blog/0_experiment=blog,model=lsgan,seed=0"
    command = shlex.split(resume_command(OmegaConf.create({"paths": {"output_dir": run}}), "trainer.max_epochs=100"))
    parsed = OverridesParser.create().parse_overrides(command[3:])
    assert {o.key_or_group: o.value() for o in parsed} == {"trainer.max_epochs": 100, "ckpt_path": f"{run}/checkpoints/last.ckpt"}


def test_a_typed_path_to_a_job_folder_works_unquoted_and_sweeps_stay_sweeps(tmp_path):
    """`python -m retina_gans.evaluate ckpt_path=<compare job>/checkpoints/last.ckpt` as the README writes it: Hydra
    alone fails on the folder's '=' and ','; the CLIs quote a value that names an existing path, and nothing else."""
    ckpt = tmp_path / "0_experiment=blog,model=lsgan,seed=0" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"")
    argv = [f"ckpt_path={ckpt}", "model=lsgan,nsgan", "seed=0,1", f"samples={tmp_path}/missing,x.npz",
            f"+ckpt_path='{ckpt}'", f"data.root={tmp_path}", "hydra.job.config.override_dirname.exclude_keys=[a,b]",
            "x=" + ",".join(["y" * 50] * 20), "--multirun"]  # a list; a value too long for a file name (once an OSError)
    quoted = quote_existing_paths(argv)
    assert quoted[1:] == argv[1:]  # sweeps, missing paths, quoted and plain values, flags: untouched
    parsed = OverridesParser.create().parse_overrides(quoted[:-1])
    assert parsed[0].key_or_group == "ckpt_path" and parsed[0].value() == str(ckpt)
    assert [p.is_sweep_override() for p in parsed[:3]] == [False, True, True]


def test_an_override_hydra_cannot_read_is_one_line_naming_the_fix_and_exit_2(monkeypatch, capsys):
    """`evaluate out=logs/a,b=c.json`: Hydra alone prints three lines without the override and exits 1."""
    called = []
    monkeypatch.setattr("sys.argv", ["evaluate", "samples=x.npz", "out=/no/such/a,b=c.json"])
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: called.append(True))
    assert exit_info.value.code == 2 and not called
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "out=/no/such/a,b=c.json" in err and "out='/no/such/a,b=c.json'" in err
    assert "x=[1,2" in unreadable_override(["--multirun", "x=[1,2"])


def test_readable_overrides_and_flags_pass_to_hydra_untouched(monkeypatch):
    argv = ["--cfg", "job", "model=lsgan,nsgan", "~ema", "+a.b=[1,2]", "hydra/launcher=joblib", "x='a=b'", "-m"]
    assert unreadable_override(argv) is None
    monkeypatch.setattr("sys.argv", ["train", *argv])
    seen = []
    run_cli(lambda: seen.append(list(sys.argv)))
    assert seen == [["train", *argv]]
