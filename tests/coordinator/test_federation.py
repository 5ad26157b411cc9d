"""Federation settings and the global adapter's wire format (the end-to-end run with real
processes is tests/integration/test_federation_e2e.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedmask.adapter import payload as adapter_payload
from fedmask.coordinator.config import FederationConfig, FederationError
from fedmask.coordinator.service import _report_problem
from fedmask.proto.fl.v1 import fl_pb2 as fl

PARTIES = ("hospital-a", "hospital-b", "bank")


class TestFederationConfig:
    def test_defaults_validate_and_sort(self):
        config = FederationConfig(participants=("hospital-b", "bank", "hospital-a"))
        assert config.participants == ("bank", "hospital-a", "hospital-b")
        assert config.training_config()["planned_rounds"] == config.rounds + config.spare_rounds

    def test_automatic_scale_cannot_wrap_and_is_largest(self):
        config = FederationConfig(participants=PARTIES, clip_norm=5.0, modulus_bits=32)
        encoding = config.encoding()
        n = len(PARTIES)
        bound = n * math.ceil(encoding.clip_norm * encoding.scale)
        assert 2 * bound + 1 <= 2**32  # the sum of n clipped, scaled updates fits mod 2^32
        doubled = n * math.ceil(encoding.clip_norm * encoding.scale * 2)
        assert 2 * doubled + 1 > 2**32  # twice the scale would not
        assert math.log2(encoding.scale).is_integer()

    def test_explicit_scale_that_wraps_is_refused(self):
        with pytest.raises(FederationError, match="encoding"):
            FederationConfig(participants=PARTIES, clip_norm=5.0, scale=2.0**30)

    @pytest.mark.parametrize(
        "changes, message",
        [
            ({"participants": ("a",)}, "at least 2"),
            ({"participants": ("a", "a")}, "a listed more than once"),
            ({"rounds": 0}, "rounds"),
            ({"clip_norm": float("inf")}, "clip_norm"),
            ({"server_optimizer": "sgd"}, "server_optimizer"),
            ({"security_mode": "trusting"}, "security mode"),
            ({"phase_timeout_s": 0}, "phase_timeout_s"),
            ({"training": {"planned_rounds": 3}}, "planned_rounds"),
            ({"threshold": 1}, "threshold"),
            ({"quorum_grace_s": 0}, "quorum_grace_s"),
            ({"quorum_grace_s": "1"}, "quorum_grace_s"),
            ({"modulus_bits": 2}, r"modulus_bits: 2 bits cannot hold the sum of 3 updates \(need at least 4"),
        ],
    )
    def test_refused(self, changes, message):
        with pytest.raises((FederationError, ValueError), match=message):
            FederationConfig(**{"participants": PARTIES, **changes})

    def test_json_round_trip_and_unknown_keys(self):
        config = FederationConfig(participants=PARTIES, rounds=4, training={"mode": "bitfit"})
        data = config.to_json()
        assert data["derived"]["encoding"]["headroom_bits"] >= 0
        assert data["derived"]["training"]["planned_rounds"] == 5
        assert FederationConfig.from_json(data) == config
        with pytest.raises(FederationError, match="unknown"):
            FederationConfig.from_json({**data, "roundz": 3})


class TestAdapterPayload:
    def test_round_trip_is_bit_exact(self):
        vector = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
        layout = [{"name": "a", "shape": [10, 100], "dtype": "float32"}]
        packed = adapter_payload.pack(vector, layout, 2)
        unpacked = adapter_payload.unpack(packed.data, packed.sha256)
        assert unpacked.vector.tobytes() == vector.tobytes()
        assert unpacked.layout == layout and unpacked.round == 2
        assert unpacked.sha256 == packed.sha256

    def test_wrong_digest_truncation_and_garbage_are_refused(self):
        packed = adapter_payload.pack(np.ones(8, dtype=np.float32), [], 0)
        with pytest.raises(adapter_payload.AdapterPayloadError, match="digest"):
            adapter_payload.unpack(packed.data, "0" * 64)
        truncated = packed.data[:-3]
        import hashlib

        with pytest.raises(adapter_payload.AdapterPayloadError):
            adapter_payload.unpack(truncated, hashlib.sha256(truncated).hexdigest())
        garbage = b"\x10" + bytes(40)
        with pytest.raises(adapter_payload.AdapterPayloadError):
            adapter_payload.unpack(garbage, hashlib.sha256(garbage).hexdigest())

    def test_non_finite_vector_is_refused(self):
        with pytest.raises(adapter_payload.AdapterPayloadError, match="finite"):
            adapter_payload.pack(np.array([1.0, np.nan], dtype=np.float32), [], 0)


class TestReports:
    def test_valid_report(self):
        report = fl.ParticipantReport(round=1, adapter_round=0, epsilon=1.5, delta=1e-5)
        assert _report_problem(report, rounds=3) is None

    def test_a_report_has_no_field_for_per_party_results(self):
        """Held-out counts and free-form metrics were sent in the clear; they travel as sums now."""
        fields = {f.name for f in fl.ParticipantReport.DESCRIPTOR.fields}
        assert fields == {"round", "adapter_round", "epsilon", "delta"}

    @pytest.mark.parametrize(
        "fields, message",
        [
            ({"round": 9}, "round numbers"),
            ({"epsilon": float("nan")}, "epsilon"),
            ({"epsilon": -1.0}, "epsilon"),
            ({"delta": 1.0}, "delta"),
        ],
    )
    def test_refused(self, fields, message):
        report = fl.ParticipantReport(**{"round": 1, "epsilon": 1.0, "delta": 1e-5, **fields})
        assert message in _report_problem(report, rounds=3)


class TestAggregateNoise:
    def test_plan_is_calibrated_for_the_threshold_and_the_run(self):
        config = FederationConfig(
            participants=PARTIES, threshold=2, rounds=3, aggregate_noise="skellam", aggregate_epsilon=10.0
        )
        plan = config.noise_plan(5000)
        assert plan.config.min_survivors == 2 and plan.config.max_participants == 3
        assert plan.padded_dimension == 8192
        assert plan.planned_epsilon == pytest.approx(10.0, rel=1e-6)
        assert plan.headroom_bits >= 1  # room to detect a wrapped sum

    def test_none_has_no_plan_and_epsilon_only_with_noise(self):
        assert FederationConfig(participants=PARTIES).noise_plan(100) is None
        with pytest.raises(FederationError, match="aggregate_epsilon"):
            FederationConfig(participants=PARTIES, aggregate_epsilon=1.0)
        with pytest.raises(FederationError, match="aggregate_epsilon"):
            FederationConfig(participants=PARTIES, aggregate_noise="skellam")
        with pytest.raises(FederationError):
            FederationConfig(participants=PARTIES, aggregate_noise="laplace", aggregate_epsilon=1.0)


class TestConfigFromJson:
    """A config file's mistakes are refused by key, before any state is written."""

    @pytest.mark.parametrize(
        "changes, message",
        [
            ({"rounds": "3"}, r"rounds: expected an integer, got '3'"),
            ({"clip_norm": True}, r"clip_norm: expected a finite number"),
            ({"participants": "bank"}, r"participants: expected a list of names"),
            ({"training": []}, r"training: expected an object"),
            ({"training": {"epoch": 1}}, r"training\.epoch: unknown training setting"),
            ({"training": {"epochs": "two"}}, r"training\.epochs: expected a finite number or null"),
            ({"training": {"lora_targets": "q_proj"}}, r"training\.lora_targets: expected a list of strings"),
            ({"training": {"batch_size": 0}}, r"training: .*batch_size"),
            ({"training": {"model_path": "/nonexistent/model"}}, r"training\.model_path: no model directory"),
        ],
    )
    def test_bad_values_name_their_key(self, changes, message):
        data = {**FederationConfig(participants=PARTIES).to_json(), **changes}
        with pytest.raises(FederationError, match=message):
            FederationConfig.from_json(data)

    def test_not_an_object(self):
        with pytest.raises(FederationError, match="JSON object"):
            FederationConfig.from_json([1, 2])  # type: ignore[arg-type]


class _Roster:
    def __init__(self, names):
        self.entries = {name: object() for name in names}


def _insecure(roster=None):
    from fedmask.coordinator.transport import InsecureAuthenticator, ServerSecurity

    return ServerSecurity(None, InsecureAuthenticator(), roster)


def _tiny_initial():
    layout = [{"name": "lora.weight", "shape": [8], "dtype": "float32"}]
    return np.zeros(8, dtype=np.float32), layout


def _federation(tmp_path, config, *, initial=None, progress=None):
    """A federation on loopback without TLS, its state in ``tmp_path / "state"``."""
    from fedmask.coordinator.federation import Federation
    from fedmask.coordinator.round_server import ServerSettings

    return Federation(
        config,
        tmp_path / "state",
        _insecure(),
        settings=ServerSettings(host="127.0.0.1", port=0),
        initial=initial or _tiny_initial(),
        progress=progress,
    )


class TestFederationStart:
    def test_participants_outside_the_roster_are_refused_before_anything_is_written(self, tmp_path):
        from fedmask.coordinator.federation import Federation

        config = FederationConfig(participants=PARTIES)
        with pytest.raises(FederationError, match="not in the CA-signed roster: hospital-b"):
            Federation(config, tmp_path / "state", _insecure(_Roster(["hospital-a", "bank"])))
        assert not (tmp_path / "state" / "federation.db").exists()

    def test_a_round_no_attempt_could_start_is_recorded_as_failed(self, tmp_path):
        """Malicious mode without enrolled identity keys: nobody can be selected. The round is
        recorded as failed (the state can be resumed), not a crash on an unbegun round."""
        import asyncio

        config = FederationConfig(participants=PARTIES, rounds=1, threshold=2, final_report_wait_s=0.01)
        lines: list[str] = []
        federation = _federation(tmp_path, config, progress=lines.append)
        asyncio.run(federation.run())
        assert federation.store.next_round_number() == 2 and not federation.store.ledger()
        assert any("round 1 failed" in line and "no enrolled identity key" in line for line in lines)

    def test_a_failed_round_is_history_and_a_restart_goes_on_with_the_next(self, tmp_path, monkeypatch):
        import asyncio

        from fedmask.coordinator import federation as federation_module
        from fedmask.coordinator.federation import RoundFailed

        config = FederationConfig(participants=PARTIES, rounds=3, final_report_wait_s=0.01)
        attempted: list[int] = []

        class Stop(Exception):
            pass

        async def fail_first_then_stop(self, round_number, vector, layout, params, optimizer):
            attempted.append(round_number)
            if round_number == 1:
                self.store.begin_round(1, b"round-one", PARTIES)
                self.store.fail_round(1, "fewer than t survivors")
                raise RoundFailed("every attempt failed")
            raise Stop  # a crash before round 2 began

        def start():
            return _federation(tmp_path, config)

        monkeypatch.setattr(federation_module.Federation, "_run_round", fail_first_then_stop)
        first = start()
        with pytest.raises(Stop):
            asyncio.run(first.run())
        first.store.close()  # the crash: the process and its writer lock are gone
        assert attempted == [1, 2]  # round 1 failed, the federation went on to round 2
        attempted.clear()
        with pytest.raises(Stop):
            asyncio.run(start().run())
        assert attempted == [2]  # the failed round is not run again, nor skipped past

    def test_a_damaged_older_checkpoint_is_refused_at_start_up_and_no_file_is_removed(self, tmp_path, monkeypatch):
        """Only the last checkpoint is loaded to resume; start-up still checks every committed
        one (sizes), so a damaged round-0 file is found now, not when it is needed."""
        import asyncio

        from fedmask.coordinator import federation as federation_module
        from fedmask.coordinator.store import LedgerEntry, StoreError

        config = FederationConfig(participants=PARTIES, rounds=3, final_report_wait_s=0.01)

        class Stop(Exception):
            pass

        async def commit_one_then_stop(self, round_number, vector, layout, params, optimizer):
            if round_number == 2:
                raise Stop
            self.store.begin_round(round_number, b"round-one", PARTIES)
            ref = self.store.save_checkpoint(round_number, vector + 1.0, layout)
            entry = LedgerEntry(
                survivors=tuple(PARTIES), dropped={}, encoding={"modulus_bits": 32}, epsilon=dict.fromkeys(PARTIES, 1.0)
            )
            self.store.commit_round(round_number, ref, entry)
            return vector + 1.0

        monkeypatch.setattr(federation_module.Federation, "_run_round", commit_one_then_stop)
        first = _federation(tmp_path, config)
        with pytest.raises(Stop):
            asyncio.run(first.run())
        first.store.close()
        (round_zero,) = first.store.checkpoint_dir.glob("round-000000-*.adapter.safetensors")
        round_zero.write_bytes(round_zero.read_bytes()[:-8])
        files_before = sorted(p.name for p in round_zero.parent.iterdir())

        with pytest.raises(StoreError, match=rf"round 0: {round_zero.name} has \d+ bytes, \d+ recorded"):
            asyncio.run(_federation(tmp_path, config).run())
        assert sorted(p.name for p in round_zero.parent.iterdir()) == files_before


class TestNoiseCost:
    """The coordinator says up front what distributed noise costs (the issue: a decoded mean
    update of norm 424 against a clip of 5, reported without a word)."""

    def test_noise_that_swamps_the_signal_is_announced_with_a_warning(self):
        from fedmask.coordinator.federation import noise_cost_lines

        config = FederationConfig(participants=PARTIES, rounds=3, aggregate_noise="skellam", aggregate_epsilon=10.0)
        plan = config.noise_plan(200_000)
        lines = noise_cost_lines(plan, config.rounds)
        assert f"{plan.expected_noise_norm(3):.3g} with 3 survivors" in lines[0]
        assert plan.noise_to_clip(3) / math.sqrt(3) > 1 and lines[1].startswith("WARNING")

    def test_a_meaningful_setting_has_no_warning(self):
        from fedmask.coordinator.federation import noise_cost_lines

        parties = tuple(f"party-{i}" for i in range(50))
        config = FederationConfig(participants=parties, rounds=4, aggregate_noise="skellam", aggregate_epsilon=10.0)
        plan = config.noise_plan(1000)
        lines = noise_cost_lines(plan, config.rounds)
        assert len(lines) == 1 and plan.noise_to_clip(50) < 1


HEAD_BIAS = "base_model.model.classifier.modules_to_save.default.bias"


class TestCalibrationRound:
    """After the last training round the summed calibration releases move the head's bias."""

    @staticmethod
    def _run(tmp_path, monkeypatch, releases):
        import asyncio

        from fedmask.adapter.calibration import encode_release
        from fedmask.adapter.metrics import METRIC_COORDINATES
        from fedmask.coordinator.round_server import CoordinatorServer, RoundOutcome

        layout = [
            {"name": "lora.weight", "shape": [4], "dtype": "float32"},
            {"name": HEAD_BIAS, "shape": [2], "dtype": "float32"},
        ]
        config = FederationConfig(
            participants=PARTIES, rounds=1, threshold=2, security_mode="semi-honest", final_report_wait_s=0.01
        )
        federation = _federation(tmp_path, config, initial=(np.zeros(6, dtype=np.float32), layout))
        published: list[tuple[int, int]] = []

        async def run_round(server, round_config):
            task = federation.service.task
            published.append((task.action, task.round))
            if task.action == fl.Task.TRAIN:  # a zero update with zero held-out figures
                total = np.zeros(round_config.params.dimension, dtype=np.uint32)
                assert total.size == 6 + METRIC_COORDINATES
            else:
                encoded = [encode_release(r, 32, len(PARTIES)).astype(np.uint64) for r in releases]
                total = (sum(encoded) % (1 << 32)).astype(np.uint32)
            return RoundOutcome(
                round_config.round_id, PARTIES, joined=PARTIES, completed=True, survivors=PARTIES, result=total
            )

        monkeypatch.setattr(CoordinatorServer, "run_round", run_round)
        asyncio.run(federation.run())
        return federation, published

    def test_the_summed_releases_set_the_final_adapters_threshold(self, tmp_path, monkeypatch):
        from fedmask.adapter.calibration import BINS, solve_shift

        counts = np.zeros(BINS)
        counts[6:12] = [30, 60, 80, 60, 40, 20]
        releases = [np.concatenate(([40.0], counts)), np.concatenate(([25.0], counts / 2)), np.full(BINS + 1, -3.0)]
        federation, published = self._run(tmp_path, monkeypatch, releases)
        assert published == [(fl.Task.TRAIN, 1), (fl.Task.CALIBRATE, 2)]
        expected = solve_shift(np.sum(releases, axis=0))
        ledger = federation.store.ledger()
        assert [entry["round"] for entry in ledger] == [1, 2]
        assert ledger[1]["metrics"]["calibration"] == expected.as_dict()
        vector, _ = federation.store.load_checkpoint(federation.store.last_committed())
        np.testing.assert_array_equal(vector, np.array([0, 0, 0, 0, 0, expected.shift], dtype=np.float32))
        final = federation.service.task
        assert final.action == fl.Task.FINISHED and final.adapter.round == 2

    def test_a_release_with_nothing_to_calibrate_is_not_run_again(self, tmp_path, monkeypatch):
        from fedmask.adapter.calibration import BINS

        nothing = [np.concatenate(([0.0], np.full(BINS, 5.0)))] * 3  # no positives: no threshold to set
        federation, published = self._run(tmp_path, monkeypatch, nothing)
        # One attempt: another would make the participants release (and spend) again for nothing.
        assert published == [(fl.Task.TRAIN, 1), (fl.Task.CALIBRATE, 2)]
        assert [entry["round"] for entry in federation.store.ledger()] == [1]
        vector, _ = federation.store.load_checkpoint(federation.store.last_committed())
        assert not vector.any()  # the training round's adapter is the final one
        assert federation.service.task.action == fl.Task.FINISHED and federation.service.task.adapter.round == 1


class TestImpossibleSum:
    """The issue's "huge update" (2^31 in every coordinate) was summed and applied. A sum no
    clipped updates of the survivors can add up to is refused, the attempt re-runs, and the
    global adapter never moves by it."""

    def test_a_sum_beyond_the_survivors_clip_is_refused_and_the_round_re_runs(self, tmp_path, monkeypatch):
        import asyncio

        from fedmask.adapter.metrics import METRIC_COORDINATES
        from fedmask.coordinator.round_server import CoordinatorServer, RoundOutcome

        config = FederationConfig(
            participants=PARTIES, rounds=1, threshold=2, security_mode="semi-honest", final_report_wait_s=0.01
        )
        lines: list[str] = []
        federation = _federation(tmp_path, config, progress=lines.append)
        dimension = 8 + METRIC_COORDINATES
        huge = np.full(dimension, 1 << 31, dtype=np.uint32)
        huge[8:] = 0  # the held-out figures honest: only the update is out of bounds
        honest = np.zeros(dimension, dtype=np.uint32)
        honest[:8] = config.encoding().scale  # +1.0 a coordinate in all: a mean update of 1/3
        sums = [huge, honest]

        async def run_round(server, round_config):
            assert round_config.params.dimension == dimension
            return RoundOutcome(
                round_config.round_id, PARTIES, joined=PARTIES, completed=True, survivors=PARTIES, result=sums.pop(0)
            )

        monkeypatch.setattr(CoordinatorServer, "run_round", run_round)
        asyncio.run(federation.run())
        assert not sums  # two attempts: the refused one and its re-run
        assert any("attempt 1 aborted (the sum was refused" in line and "exceed" in line for line in lines)
        vector, _ = federation.store.load_checkpoint(federation.store.last_committed())
        assert config.server_optimizer == "fedavg"
        expected = np.float32(config.server_learning_rate / 3)
        np.testing.assert_array_equal(vector, np.full(8, expected))
