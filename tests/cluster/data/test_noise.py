import numpy as np
import pytest

from cluster.data.noise import insert_noise, make_noise, mix_noise


def test_noise_is_seeded_and_unit_power():
    for kind in ("white", "pink", "brown"):
        a, b = make_noise(kind, 16000, 3), make_noise(kind, 16000, 3)
        assert np.array_equal(a, b) and not np.array_equal(a, make_noise(kind, 16000, 4))
        assert np.mean(a ** 2) == pytest.approx(1.0, rel=1e-6)


def test_pink_noise_has_a_minus_one_spectral_slope():
    x = make_noise("pink", 2 ** 16, 0)
    p = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x))
    band = (f > 0.001) & (f < 0.4)
    slope = np.polyfit(np.log(f[band]), np.log(p[band]), 1)[0]
    assert slope == pytest.approx(-1.0, abs=0.1)
    w = make_noise("white", 2 ** 16, 0)
    pw = np.abs(np.fft.rfft(w)) ** 2
    assert np.polyfit(np.log(f[band]), np.log(pw[band]), 1)[0] == pytest.approx(0.0, abs=0.1)


@pytest.mark.parametrize("snr", [0.0, 10.0, 20.0])
def test_insertion_keeps_the_speech_and_sets_the_snr(snr):
    rng = np.random.default_rng(0)
    speech = rng.standard_normal(8000) * 300
    out = insert_noise(speech, at=3000, length=1600, kind="white", snr_db=snr, seed=1)
    assert len(out) == 9600
    assert np.array_equal(out[:3000], speech[:3000]) and np.array_equal(out[4600:], speech[3000:])
    measured = 10 * np.log10(np.mean(speech ** 2) / np.mean(out[3000:4600] ** 2))
    assert measured == pytest.approx(snr, abs=1e-6)
    mixed = mix_noise(speech, "pink", snr, 2)
    assert 10 * np.log10(np.mean(speech ** 2) / np.mean((mixed - speech) ** 2)) == pytest.approx(snr, abs=1e-6)


def test_babble_needs_sources_and_mixes_them():
    sources = [np.sin(np.arange(5000) * f) for f in (0.01, 0.02, 0.05, 0.1, 0.2)]
    b = make_noise("babble", 12000, 0, sources)
    assert len(b) == 12000 and np.mean(b ** 2) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="babble noise needs other utterances"):
        make_noise("babble", 100, 0)
    with pytest.raises(ValueError, match="unknown noise kind"):
        make_noise("violet", 100, 0)
    with pytest.raises(ValueError, match="outside the utterance"):
        insert_noise(np.ones(10), 11, 5, "white", 0, 0)
