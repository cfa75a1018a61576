"""Export a checkpoint's pseudo log-likelihoods as a Kaldi archive, for decoding with Kaldi graphs.

log p(x|s) ~ log p(s|x) - prior_scale * log p(s): what ``nnet3-compute`` with ``--priors`` writes,
so users with WSJ/Kaldi HCLG graphs can run ``latgen-faster-mapped`` on it and score WER.
"""

from __future__ import annotations

from pathlib import Path

import kaldiio
import numpy as np
import torch

from cluster.data.kaldi import CorpusError, read_corpus
from cluster.decode import PhoneLoopGraph, log_likelihoods
from cluster.models.checkpoint import load_checkpoint, model_file


def export_loglikelihoods(checkpoint: str | Path, out: str | Path, split: str = "test", corpus: str | None = None,
                          prior_scale: float = 1.0, utterances: int | None = None, allow_pipes: bool = False) -> int:
    path = model_file(checkpoint)
    model, meta = load_checkpoint(path)
    if meta.decode_graph is None:
        raise CorpusError(f"{path}: checkpoint has no state priors (decode_graph); it was not written by training")
    graph = PhoneLoopGraph.from_dict(meta.decode_graph)
    trained_on = meta.corpus
    where = corpus or meta.trained_corpus
    if not where:
        raise CorpusError(f"{path}: the checkpoint does not say which corpus it was trained on; pass --corpus")
    corpus_obj = read_corpus(where, allow_pipes=allow_pipes)
    if corpus_obj.num_targets != trained_on["num_targets"]:
        raise CorpusError(f"{corpus_obj.manifest_path}: {corpus_obj.num_targets} targets, but {path} was trained "
                          f"on {trained_on['num_targets']}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_ark, tmp_scp = out.with_name(out.name + ".tmp"), out.with_suffix(".scp.tmp")
    model.eval()
    n = 0
    s = corpus_obj.split(split)
    ids = s.utt_ids[:utterances] if utterances else s.utt_ids
    with kaldiio.WriteHelper(f"ark,scp:{tmp_ark},{tmp_scp}") as writer, torch.no_grad():
        for utt_id in ids:
            utt = s.load(utt_id)
            x = torch.from_numpy(utt.feats)[None]
            logp = torch.log_softmax(model(x, torch.tensor([len(utt.feats)])).float(), -1)[0].numpy()
            writer(utt_id, log_likelihoods(logp, graph, prior_scale).astype(np.float32))
            n += 1
    # the scp names the archive by its final path
    tmp_scp.write_text(tmp_scp.read_text().replace(str(tmp_ark), str(out)))
    tmp_ark.replace(out)
    tmp_scp.replace(out.with_suffix(".scp"))
    return n
