"""Kaldi-ark export of pseudo log-likelihoods from a checkpoint."""

import kaldiio
import numpy as np
import pytest
import torch

from cluster.data.kaldi import CorpusError, read_corpus
from cluster.decode import estimate_graph
from cluster.export import export_loglikelihoods
from cluster.models import ModelConfig, build_model, save_checkpoint

pytestmark = pytest.mark.slow


def test_export_writes_log_posteriors_minus_log_priors(small_corpus, tmp_path):
    corpus = read_corpus(small_corpus)
    train = list(corpus.split("train"))
    graph = estimate_graph([(u.phones, u.targets) for u in train], corpus.num_targets, phone_symbols=corpus.phones)
    torch.manual_seed(0)
    model = build_model(ModelConfig(cell="gru", layers=1, hidden=8, num_targets=corpus.num_targets),
                        corpus.cmvn_mean, corpus.cmvn_std)
    ckpt = save_checkpoint(tmp_path / "model.pt", model, corpus.identity,
                           extra={"decode_graph": graph.to_dict(), "stamps": {"config": {"corpus": str(small_corpus)}}})
    n = export_loglikelihoods(ckpt, tmp_path / "ll.ark", split="test", prior_scale=0.5, utterances=3)
    assert n == 3
    got = kaldiio.load_scp(str(tmp_path / "ll.scp"))
    test = corpus.split("test")
    assert list(got) == test.utt_ids[:3]
    utt = test.load(test.utt_ids[0])
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.from_numpy(utt.feats)[None]), -1)[0].numpy()
    np.testing.assert_allclose(got[utt.utt_id], logp - 0.5 * graph.log_prior, rtol=1e-5, atol=1e-5)
    # a checkpoint without priors is refused by name
    bare = save_checkpoint(tmp_path / "bare.pt", model, corpus.identity)
    with pytest.raises(CorpusError, match="bare.pt: checkpoint has no state priors"):
        export_loglikelihoods(bare, tmp_path / "x.ark")
    assert not (tmp_path / "x.ark").exists()
