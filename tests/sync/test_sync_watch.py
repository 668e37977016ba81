"""watch: pushes complete checkpoints once, survives restarts, stops on SIGTERM."""

from __future__ import annotations

import signal
import subprocess

from helpers import env_for, local_case, model, permissions_held, tz

from theta_zarr.remote import RemoteSpec
from theta_zarr.sync import SyncRemote


def _watched(tmp_path):
    """(a folder remote, the CLI's environment, an empty folder to watch)."""
    case = local_case(tmp_path)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    return case, env_for(case, tmp_path), ckpt


def test_watch_pushes_complete_checkpoints_once(tmp_path):
    case, env, ckpt = _watched(tmp_path)
    model(ckpt / "step-1.safetensors", seed=1)
    (ckpt / "step-2").mkdir()
    model(ckpt / "step-2" / "model.safetensors", seed=2)  # no marker yet: not complete
    args = ["watch", str(ckpt), case.url, "--ref-prefix", "run7/", "--interval", "0.3",
            "--marker", "DONE", "--chunk-size", "16KiB", "--once"]
    err = tz(args, env).stderr.decode()
    remote = SyncRemote.open(RemoteSpec("t", case.url, {}))
    assert [n for n, _ in remote.refs.list("run7/")] == ["run7/step-1"]
    assert "created run7/step-1" in err
    (ckpt / "step-2" / "DONE").write_text("")
    err = tz(args, env).stderr.decode()
    assert "created run7/step-1" not in err  # the state file: nothing is pushed twice
    assert "delta base run7/step-1" in err  # step-2 continues step-1
    assert "created run7/step-2" in err
    assert [n for n, _ in remote.refs.list("run7/")] == ["run7/step-1", "run7/step-2"]
    files = remote.load(remote.refs.read("run7/step-2").digest).files
    assert list(files) == ["model.safetensors"]  # the marker is not pushed
    # a long-running watcher stops cleanly on SIGTERM
    proc = subprocess.Popen(["theta-zarr", *args[:-1], "--interval", "30"], env=env,
                            stderr=subprocess.PIPE)
    # signal only once the watcher says it is watching (its handler is in place by then)
    lines = iter(proc.stderr.readline, b"")
    assert any(line.startswith(b"theta-zarr: watching ") for line in lines)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert b"watch stopped" in proc.stderr.read()
    proc.stderr.close()


def test_exit_after_ends_the_run_within_a_long_interval(tmp_path):
    """--exit-after 0.2 with --interval 3600 slept the whole interval before it looked at
    the bound again: the run lasted an hour.  (A hang fails by the timeout.)"""
    case, env, ckpt = _watched(tmp_path)
    proc = subprocess.run(["theta-zarr", "watch", str(ckpt), case.url, "--ref-prefix", "r/",
                           "--interval", "3600", "--exit-after", "0.2"], env=env,
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.decode().splitlines()[-1] == "theta-zarr: watch stopped"


def test_a_damaged_state_file_is_one_line(tmp_path):
    """Deep nesting was an internal error (RecursionError); a 'pushed' list failed later,
    inside the loop, as an internal error too."""
    from theta_zarr.watch import STATE_FILE

    case, env, ckpt = _watched(tmp_path)
    model(ckpt / "step-1.safetensors", seed=1)
    for text in ("[" * 100_000, '{"pushed": [1, 2]}', '{"pushed": {"r": 3}}'):
        (ckpt / STATE_FILE).write_text(text)
        proc = tz(["watch", str(ckpt), case.url, "--ref-prefix", "run7/", "--once"], env,
                  check=False)
        err = proc.stderr.decode()
        assert proc.returncode == 1 and "internal error" not in err, err
        assert err.splitlines()[-1].startswith("theta-zarr: cannot read watch state"), err


def test_a_read_only_folder_is_refused_before_a_push_and_named_not_a_temp_file(tmp_path):
    """A read-only checkpoint folder: the watcher pushed the first checkpoint, then stopped
    on recording it, naming a random temporary file (``.theta-zarr-mcdd7vqm: Permission
    denied``); ``pull -o`` into such a folder named one too."""
    from theta_zarr.watch import STATE_FILE

    case, env, ckpt = _watched(tmp_path)
    model(ckpt / "step-1.safetensors", seed=1)
    ckpt.chmod(0o555)
    held = permissions_held()
    try:
        args = ["watch", str(ckpt), case.url, "--ref-prefix", "run7/", "--interval", "0.2",
                "--chunk-size", "16KiB", "--once"]
        proc = tz(args, env, check=False, prefix=held)
        err = proc.stderr.decode()
        assert proc.returncode == 1, err
        assert err.splitlines() == [f"theta-zarr: cannot write watch state {ckpt / STATE_FILE}"
                                    ": Permission denied; choose a writable file with --state"
                                    ], err
        remote = SyncRemote.open(RemoteSpec("t", case.url, {}))
        assert list(remote.refs.list("run7/")) == []  # refused before anything was pushed
        state = tmp_path / "state" / "watch.json"  # a folder --state makes
        tz([*args, "--state", str(state)], env, prefix=held)
        assert [n for n, _ in remote.refs.list("run7/")] == ["run7/step-1"]
        out = ckpt / "pulled.safetensors"
        proc = tz(["pull", case.url, "run7/step-1", "-o", str(out)], env, check=False,
                  prefix=held)
        err = proc.stderr.decode()
        assert proc.returncode == 1 and err == (f"theta-zarr: cannot write {out}: {ckpt} is "
                                                "not writable (nothing was fetched)\n"), err
        assert sorted(p.name for p in ckpt.iterdir()) == ["step-1.safetensors"]
    finally:
        ckpt.chmod(0o755)


def test_a_name_no_ref_can_take_is_skipped_and_the_rest_pushed(tmp_path):
    """It used to stop the watcher (exit 1) before anything was pushed."""
    case, env, ckpt = _watched(tmp_path)
    model(ckpt / "model copy.safetensors", seed=1)
    model(ckpt / "step-1.safetensors", seed=2)
    proc = tz(["watch", str(ckpt), case.url, "--ref-prefix", "run7/", "--interval", "0.3",
               "--chunk-size", "16KiB", "--once"], env, check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 1  # something was not pushed, and the exit status says so
    assert err.count("model copy.safetensors: not pushed: invalid ref name") == 1
    remote = SyncRemote.open(RemoteSpec("t", case.url, {}))
    assert [n for n, _ in remote.refs.list("run7/")] == ["run7/step-1"]


def test_watch_deltas_each_step_against_the_one_before(tmp_path):
    from theta_zarr import codecs
    from theta_zarr.demo import ModelShape, write_model
    from theta_zarr.objects import object_key

    shape = ModelShape(hidden=64, layers=2, vocab=256)
    every = [n for n, _ in shape.tensors()]
    case, env, ckpt = _watched(tmp_path)
    for step, tuned in ((1, []), (2, every)):
        (ckpt / f"step-{step}").mkdir()
        write_model(str(ckpt / f"step-{step}" / "model.safetensors"), shape, tuned=tuned,
                    step=1e-4)
        (ckpt / f"step-{step}" / "DONE").write_text("")
        tz(["watch", str(ckpt), case.url, "--ref-prefix", "run7/", "--marker", "DONE",
            "--chunk-size", "16KiB", "--interval", "0.2", "--once"], env)
    remote = SyncRemote.open(RemoteSpec("t", case.url, {}))
    members = [remote.load(remote.load(remote.refs.read(f"run7/step-{s}").digest)
                           .files["model.safetensors"].manifest) for s in (1, 2)]
    new = members[1].digests() - members[0].digests()
    forms = {codecs.split(remote.objects.blobs.get(object_key(d)))[0] for d in new}
    assert new and forms == {"int-delta"}


def test_a_folder_of_many_steps_is_pushed_in_step_order(tmp_path):
    """A watcher started on a folder that already holds steps 9, 10 and 100 pushed them
    in byte order (10, 100, 9): step 9 deltaed against step 100, and the ref written
    last, which the next publish takes as its base, was step 9, not the latest."""
    case, env, ckpt = _watched(tmp_path)
    for step in (100, 9, 10):
        (ckpt / f"checkpoint-{step}").mkdir()
        model(ckpt / f"checkpoint-{step}" / "model.safetensors", seed=step)
    err = tz(["watch", str(ckpt), case.url, "--ref-prefix", "run7/", "--interval", "0",
              "--chunk-size", "16KiB", "--once"], env).stderr.decode()
    lines = {line.split()[2]: line for line in err.splitlines() if " created " in line}
    assert list(lines) == ["run7/checkpoint-9", "run7/checkpoint-10", "run7/checkpoint-100"]
    assert "no delta base" in lines["run7/checkpoint-9"]
    assert "delta base run7/checkpoint-9;" in lines["run7/checkpoint-10"]
    assert "delta base run7/checkpoint-10;" in lines["run7/checkpoint-100"]


def test_watch_pushes_on_when_its_last_ref_is_gone_from_the_remote(tmp_path):
    """The ref watch pushed last is its next delta base; if it was deleted since, the
    next step is pushed with the default base instead of failing on a missing base."""
    case, env, ckpt = _watched(tmp_path)
    model(ckpt / "step-1.safetensors", seed=1)
    args = ["watch", str(ckpt), case.url, "--ref-prefix", "run7/", "--interval", "0.3",
            "--chunk-size", "16KiB", "--once"]
    tz(args, env)
    (tmp_path / "bucket" / "refs" / "run7" / "step-1").unlink()  # deleted by hand
    model(ckpt / "step-2.safetensors", seed=2)
    err = tz(args, env).stderr.decode()
    assert "push failed" not in err and "created run7/step-2" in err, err


def test_a_push_an_outage_stopped_is_pushed_once_the_storage_answers(tmp_path):
    """An outage used to end the watcher's usefulness: the checkpoint it met was skipped
    until it changed, and the remote, counted as down for good, failed every later
    push at once with the old message, though the server was back."""
    import threading

    from theta_zarr.objects import ObjectStore
    from theta_zarr.settings import Settings
    from theta_zarr.storage import StorageError
    from theta_zarr.storage.local import LocalStore
    from theta_zarr.watch import Watcher, WatchOptions

    class Flaky(LocalStore):
        down = False

        def put(self, key, chunks):
            if self.down and key.startswith("objects/"):
                raise StorageError(f"cannot write {key} in {self.describe()}: no answer")
            return super().put(key, chunks)

    blobs = Flaky(str(tmp_path / "bucket"))
    remote = SyncRemote(ObjectStore(blobs, retry_timeout=0.3))
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    model(ckpt / "step-1.safetensors", seed=1)
    said: list[str] = []
    watcher = Watcher(str(ckpt), remote,
                      Settings(cache_dir=str(tmp_path / "cache"), chunk_bytes=16 << 10),
                      WatchOptions(prefix="run7/", interval=0), said.append)
    stop = threading.Event()
    seen, _ = watcher.scan({}, stop)
    blobs.down = True
    for _ in range(3):  # the outage lasts a few scans: said once, tried each time
        seen, failures = watcher.scan(seen, stop)
        assert failures == 0
    assert sum("step-1: push failed" in s for s in said) == 1, said
    assert "trying again" in said[-1]
    blobs.down = False
    model(ckpt / "step-2.safetensors", seed=2)
    seen, _ = watcher.scan(seen, stop)  # step-1 again; step-2 seen for the first time
    seen, _ = watcher.scan(seen, stop)
    assert [n for n, _ in remote.refs.list("run7/")] == ["run7/step-1", "run7/step-2"]
    stop.set()
    assert watcher.run(stop) == 0  # nothing left to retry: a clean exit



def test_a_file_caught_half_written_and_pushed_once_complete_is_no_failure(tmp_path):
    """A save that stalls longer than an interval (a slow share) is taken for complete,
    and its push fails (truncated); once the job finishes the file, it is pushed.  The
    watcher then exited 1 all the same, though everything was pushed."""
    import threading

    from theta_zarr.settings import Settings
    from theta_zarr.watch import Watcher, WatchOptions

    case, _, ckpt = _watched(tmp_path)
    full = model(tmp_path / "full.safetensors", seed=1).read_bytes()
    (ckpt / "step-1.safetensors").write_bytes(full[:len(full) // 2])
    stop = threading.Event()
    said: list[str] = []

    def echo(line: str) -> None:
        said.append(line)
        if "step-1: push failed" in line:  # the job finishes writing the file
            (ckpt / "step-1.safetensors").write_bytes(full)
        if line.startswith("created run7/step-1"):
            stop.set()

    remote = SyncRemote.open(RemoteSpec("t", case.url, {}))
    watcher = Watcher(str(ckpt), remote,
                      Settings(cache_dir=str(tmp_path / "cache"), chunk_bytes=16 << 10),
                      WatchOptions(prefix="run7/", interval=0), echo)
    assert watcher.run(stop) == 0, said
    assert sum("push failed" in line for line in said) == 1, said
    assert [n for n, _ in remote.refs.list("run7/")] == ["run7/step-1"]


def test_the_same_folder_watched_into_another_remote_is_pushed_there(tmp_path):
    """The state file said "pushed" whatever the remote: watching the folder into a new
    bucket pushed nothing and exited 0.  A record from before records named their remote
    counts only where the remote's ref holds its digest."""
    import json
    import threading

    from helpers import settings

    from theta_zarr.watch import STATE_FILE, Watcher, WatchOptions

    case, _, ckpt = _watched(tmp_path)
    said: list[str] = []

    def watch(url: str) -> SyncRemote:
        remote = SyncRemote.open(RemoteSpec("t", url, {}), need="write")
        opts = WatchOptions(prefix="run7/", interval=0.05, once=True)
        assert Watcher(str(ckpt), remote, settings(tmp_path), opts, said.append).run(
            threading.Event()) == 0
        return remote

    model(ckpt / "step-1.safetensors", seed=1)
    watch(case.url)
    said.clear()
    other = watch(str(tmp_path / "other"))
    assert [n for n, _ in other.refs.list("run7/")] == ["run7/step-1"], said
    # a state file of an older release: no remote in its records
    state = json.loads((ckpt / STATE_FILE).read_text())
    assert state["pushed"]["run7/step-1"].pop("remote") == other.url
    (ckpt / STATE_FILE).write_text(json.dumps(state))
    model(ckpt / "step-2.safetensors", seed=2)
    said.clear()
    watch(case.url)
    assert [line.split(" ->")[0] for line in said] == ["created run7/step-2"], said


def test_a_marker_with_content_is_part_of_the_checkpoint(tmp_path):
    """The Trainer writes trainer_state.json last, the natural --marker; markers were never
    pushed, so the ref lacked it and a resume from the pulled folder restarted at step 0.
    An empty marker (a DONE sentinel) is still left out."""
    import threading

    from helpers import settings

    from theta_zarr.watch import Watcher, WatchOptions

    case, _, ckpt = _watched(tmp_path)
    for step, state in ((500, '{"global_step": 500}'), (1000, "")):
        (ckpt / f"checkpoint-{step}").mkdir()
        model(ckpt / f"checkpoint-{step}" / "model.safetensors", seed=step)
        (ckpt / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    remote = SyncRemote.open(RemoteSpec("t", case.url, {}), need="write")
    opts = WatchOptions(prefix="run7/", marker="trainer_state.json", interval=0.05, once=True)
    said: list[str] = []
    assert Watcher(str(ckpt), remote, settings(tmp_path), opts, said.append).run(
        threading.Event()) == 0, said
    files = {s: sorted(remote.resolve(f"run7/checkpoint-{s}")[1].files) for s in (500, 1000)}
    assert files == {500: ["model.safetensors", "trainer_state.json"],
                     1000: ["model.safetensors"]}
