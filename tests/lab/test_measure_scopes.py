"""Nested measurement scopes and the one record, tested on a CPU with injected CUDA readings (measure assumption 5)."""

import pytest

from quantlab.lab import measure


class FakeCuda:
    """The CUDA allocator's current and peak counters, driven by the test: ``alloc``/``free`` move the current
    bytes, the peak follows it until ``reset_peak_memory_stats`` sets it back to the current bytes (CUDA's rule)."""

    def __init__(self):
        self.cur = self.peak = 0
        self.resets = 0

    def alloc(self, n):
        self.cur += n
        self.peak = max(self.peak, self.cur)

    def free(self, n):
        self.cur -= n

    def synchronize(self):
        pass

    def max_memory_allocated(self):
        return self.peak

    def max_memory_reserved(self):
        return self.peak + 1000  # the pool keeps one rounding block beyond the peak

    def reset_peak_memory_stats(self):
        self.resets += 1
        self.peak = self.cur

    def process_bytes(self):
        return None


def test_inner_scope_keeps_the_outer_peak():
    """The run: load 600 (and a transient 400 freed before the step); the measured step: 300 more, freed. The run's
    peak is 1000 (load + transient), which the step's reset would have lost; the step's own peak is 900."""
    cuda = FakeCuda()
    with measure.measure_memory(cuda=cuda) as run:
        cuda.alloc(600)
        cuda.alloc(400)
        cuda.free(400)
        with measure.measure_memory(cuda=cuda) as step:
            cuda.alloc(300)
            cuda.free(300)
        cuda.alloc(50)
    assert cuda.resets == 2  # the step still resets, to read its own peak
    assert step.cuda_allocated_bytes == 900
    assert run.cuda_allocated_bytes == 1000
    assert run.cuda_reserved_bytes == 2000 and step.cuda_reserved_bytes == 1900


def test_outer_peak_after_the_inner_scope_counts():
    """A peak reached after the inner scope closed (an evaluation after the step) is the outer scope's."""
    cuda = FakeCuda()
    with measure.measure_memory(cuda=cuda) as run:
        cuda.alloc(100)
        with measure.measure_memory(cuda=cuda) as step:
            cuda.alloc(200)
            cuda.free(200)
        cuda.alloc(500)
    assert step.cuda_allocated_bytes == 300 and run.cuda_allocated_bytes == 600


def test_three_levels_and_siblings():
    cuda = FakeCuda()
    with measure.measure_memory(cuda=cuda) as a:
        cuda.alloc(10)
        with measure.measure_memory(cuda=cuda) as b:
            cuda.alloc(1000)
            cuda.free(1000)
            with measure.measure_memory(cuda=cuda) as c:
                cuda.alloc(5)
        with measure.measure_memory(cuda=cuda) as d:
            cuda.alloc(1)
    assert (a.cuda_allocated_bytes, b.cuda_allocated_bytes, c.cuda_allocated_bytes, d.cuda_allocated_bytes) == \
        (1010, 1010, 15, 16)
    assert measure._OPEN == []


def test_reading_is_frozen_and_read_after_exit():
    import dataclasses

    s = measure.measure_memory(cuda=FakeCuda())
    with pytest.raises(AttributeError, match="after the scope"):
        s.cuda_allocated_bytes
    with s:
        pass
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.reading.cuda_allocated_bytes = 1
    assert s.rss_peak_bytes > 0


def test_measurement_record_has_the_validate_keys():
    import dataclasses

    from quantlab.validate import TENSOR_COMPONENTS

    m = measure.Measurement(device="cpu", weights_bytes=10, activations_bytes=3, allocated_bytes=20, batch=2, seq=8)
    d = m.meas()
    assert d == {"device": "cpu", "meas_weights_bytes": 10, "meas_activations_bytes": 3, "meas_allocated_bytes": 20,
                 "meas_batch": 2, "meas_seq": 8}
    assert set(measure.COMPONENTS) <= set(TENSOR_COMPONENTS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.weights_bytes = 1
