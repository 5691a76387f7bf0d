"""awq.evaluation (perplexity, KL divergence between two models, top-1 agreement, the per-window hook,
text sources) and the lm-evaluation-harness adapter, on a tiny byte-level model. References are
computed here with an independent float64 log-sum-exp."""
import json
import math

import numpy as np
import pytest

from awq import AutoAWQForCausalLM
from awq.evaluation import eval_kl_divergence, evaluate_perplexity, evaluate_windows, load_eval_text
from tests.tiny import CharTokenizer, calib_texts, write_tiny_model

TEXT = " ".join(calib_texts(30, seed=5))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "m"
    write_tiny_model(str(folder))
    fp = AutoAWQForCausalLM.from_pretrained(str(folder))
    q = AutoAWQForCausalLM.from_pretrained(str(folder))
    q.quantize(CharTokenizer(), quant_config={"q_group_size": 32, "w_bit": 4}, calib_data=calib_texts(20),
               max_calib_seq_len=64, max_calib_samples=20)
    return folder, fp, q


def _nll_ref(model, ids):
    logits = np.asarray(model.forward(ids[None])[0], np.float64)[:-1]
    tgt = ids[1:]
    out = []
    for t in range(len(tgt)):
        row = logits[t]
        m = row.max()
        out.append(m + math.log(sum(math.exp(v - m) for v in row)) - row[tgt[t]])
    return np.array(out)


def test_perplexity_matches_hand_computation(models):
    _, fp, _ = models
    tok = CharTokenizer()
    ids = np.asarray(tok.encode(TEXT), np.int64)
    seqlen = 96
    n = len(ids) // seqlen
    nll = np.concatenate([_nll_ref(fp, ids[w * seqlen:(w + 1) * seqlen]) for w in range(n)])
    want = math.exp(nll.mean())
    got = evaluate_perplexity(fp, tok, TEXT, seqlen=seqlen, verbose=False)
    assert got == pytest.approx(want, rel=1e-9)
    # the hook sees every window with its logits, in order
    seen = []
    evaluate_perplexity(fp, tok, TEXT, seqlen=seqlen, verbose=False, hook=lambda w, lg: seen.append((w.copy(), lg.shape)))
    assert len(seen) == n and all(s[1] == (seqlen, 272) for s in seen)
    assert np.array_equal(seen[1][0], ids[seqlen:2 * seqlen])


def test_texts_joined_with_blank_lines_and_sources(tmp_path):
    assert load_eval_text(["a", "b"], verbose=False) == "a\n\nb"
    assert load_eval_text([{"text": "x"}, {"text": "y"}], verbose=False) == "x\n\ny"
    p = tmp_path / "t.txt"
    p.write_text("file text")
    assert load_eval_text(str(p), verbose=False) == "file text"
    with pytest.raises(FileNotFoundError):
        load_eval_text(str(tmp_path / "missing.txt"), verbose=False)
    with pytest.raises(TypeError):
        load_eval_text([1, 2], verbose=False)

    class Col:  # a datasets.Dataset-like object
        column_names = ["text"]

        def __getitem__(self, k):
            return ["p", "q"]

    assert load_eval_text(Col(), verbose=False) == "p\n\nq"


def test_wikitext_falls_back_to_builtin_text(monkeypatch):
    import awq.zoo

    def unreachable(*a, **k):
        raise ConnectionError("no network")

    try:
        import datasets
        monkeypatch.setattr(datasets, "load_dataset", unreachable)
    except ImportError:
        pass
    monkeypatch.setattr(awq.zoo, "lee_corpus", lambda: {"heldout": ["doc one", "doc two"], "calibration": []})
    with pytest.warns(RuntimeWarning, match="not reachable"):  # never silent, whatever verbose says
        assert load_eval_text("wikitext", verbose=False) == "doc one\n\ndoc two"


def test_kl_divergence_compares_two_models(models):
    _, fp, q = models
    tok = CharTokenizer()
    with pytest.raises(ValueError, match="same object"):
        eval_kl_divergence(fp, fp, tok, TEXT, seqlen=96, verbose=False)
    res = eval_kl_divergence(fp, q, tok, TEXT, seqlen=96, max_windows=3, verbose=False)
    ids = np.asarray(tok.encode(TEXT), np.int64)
    kls, agree = [], []
    for w in range(3):
        win = ids[w * 96:(w + 1) * 96][None]
        a = np.asarray(fp.forward(win)[0], np.float64)[:-1]
        b = np.asarray(q.forward(win)[0], np.float64)[:-1]
        la = a - (np.log(np.exp(a - a.max(1, keepdims=True)).sum(1, keepdims=True)) + a.max(1, keepdims=True))
        lb = b - (np.log(np.exp(b - b.max(1, keepdims=True)).sum(1, keepdims=True)) + b.max(1, keepdims=True))
        kls.append((np.exp(la) * (la - lb)).sum(1))
        agree.append(a.argmax(1) == b.argmax(1))
    kl = np.concatenate(kls)
    assert res["kl_mean"] == pytest.approx(kl.mean(), rel=1e-9) and res["kl_mean"] > 0
    assert res["top1_agreement"] == pytest.approx(np.concatenate(agree).mean())
    assert 0 < res["top1_agreement"] <= 1 and res["positions"] == 3 * 95
    assert res["ppl_ref"] == pytest.approx(evaluate_perplexity(fp, tok, TEXT, 96, 3, verbose=False))
    assert res["ppl_model"] == pytest.approx(evaluate_perplexity(q, tok, TEXT, 96, 3, verbose=False))


def test_kl_of_two_copies_is_zero(models):
    folder, fp, _ = models
    other = AutoAWQForCausalLM.from_pretrained(str(folder))
    res = eval_kl_divergence(fp, other, CharTokenizer(), TEXT, seqlen=64, max_windows=2, verbose=False)
    assert res["kl_mean"] == pytest.approx(0.0, abs=1e-9) and res["top1_agreement"] == 1.0


def test_custom_hook_and_errors(models):
    _, fp, _ = models
    tok = CharTokenizer()
    got = evaluate_windows(fp, tok, TEXT, seqlen=50, fn=lambda w, lg: int(lg.argmax(-1)[0]), max_windows=2,
                           verbose=False)
    assert len(got) == 2 and all(isinstance(g, int) for g in got)
    with pytest.raises(TypeError):
        evaluate_windows(fp, tok, TEXT, seqlen=50, fn=None)
    with pytest.raises(ValueError, match="fewer than one window"):
        evaluate_perplexity(fp, tok, "short", seqlen=50, verbose=False)
    with pytest.raises(ValueError, match="seqlen"):
        evaluate_perplexity(fp, tok, TEXT, seqlen=1, verbose=False)


# ---- lm-evaluation-harness ---------------------------------------------------------------------


def _task(tmp_path, name, body, rows):
    data = tmp_path / f"{name}.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        f"test_split: test\n" + body)


def test_lm_eval_adapter_on_local_tasks(models, tmp_path, monkeypatch):
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    from awq.lm_eval_adapter import AWQLM

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    _, fp, _ = models
    tok = CharTokenizer()
    rows = [{"q": "The cat sat on the", "choices": [" mat", " sky", " sea"], "a": 0},
            {"q": "Two plus two is", "choices": [" four", " blue", " cat"], "a": 0},
            {"q": "The sun is", "choices": [" hot", " cold"], "a": 1},
            {"q": "Water is", "choices": [" wet", " dry", " red", " big"], "a": 2}]
    _task(tmp_path, "awq_local_mc", "output_type: multiple_choice\ndoc_to_text: '{{q}}'\n"
          "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{a}}'\nmetric_list:\n  - metric: acc\n", rows)
    texts = [{"text": t} for t in calib_texts(3, seed=9)]
    _task(tmp_path, "awq_local_ppl", "output_type: loglikelihood_rolling\ndoc_to_text: ''\n"
          "doc_to_target: '{{text}}'\nmetric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n", texts)
    gen = [{"q": "abc", "a": "x"}, {"q": "hello", "a": "y"}]
    _task(tmp_path, "awq_local_gen", "output_type: generate_until\ndoc_to_text: '{{q}}'\ndoc_to_target: '{{a}}'\n"
          "generation_kwargs:\n  until: ['zz']\n  max_gen_toks: 5\n  do_sample: false\n"
          "metric_list:\n  - metric: exact_match\n", gen)
    lm = AWQLM(fp, tok, max_length=64, prefix_token_id=0)
    out = lm_eval.simple_evaluate(model=lm, tasks=["awq_local_mc", "awq_local_ppl", "awq_local_gen"],
                                  task_manager=TaskManager(include_path=str(tmp_path)), limit=None,
                                  bootstrap_iters=0)
    res = out["results"]

    def ll(ctx, cont):  # independent: log P(cont | ctx) from full forwards, byte tokens
        ids = np.asarray(tok.encode(ctx + cont), np.int64)
        n = len(tok.encode(cont))
        logits = np.asarray(fp.forward(ids[:-1][None])[0], np.float64)
        tot = 0.0
        for t in range(len(ids) - 1 - n, len(ids) - 1):
            row = logits[t]
            m = row.max()
            tot += row[ids[t + 1]] - (m + math.log(np.exp(row - m).sum()))
        return tot

    acc = np.mean([int(np.argmax([ll(r["q"], c) for c in r["choices"]]) == r["a"]) for r in rows])
    assert res["awq_local_mc"]["acc,none"] == pytest.approx(acc)

    total_ll, words = 0.0, 0
    for t in texts:
        s = t["text"]
        total_ll += _rolling_ll(fp, tok, s)
        words += len(s.split())
    assert res["awq_local_ppl"]["word_perplexity,none"] == pytest.approx(math.exp(-total_ll / words), rel=1e-6)

    # generate_until: greedy continuation, cut at the stop string
    for r in gen:
        ids = np.asarray([tok.encode(r["q"])], np.int64)
        want = tok.decode(fp.generate(ids, max_new_tokens=5, do_sample=False, eos_token_id=256)[0][ids.shape[1]:])
        want = want.split("zz")[0]
        assert lm.generate_until([_Req((r["q"], {"until": ["zz"], "max_gen_toks": 5}))]) == [want]
    assert "awq_local_gen" in res


class _Req:
    def __init__(self, args):
        self.args = args


def _rolling_ll(model, tok, s):
    """Sum of log P(token_i | BOS(0), tokens < i) with windows of 64 (every token once)."""
    ids = [0] + tok.encode(s)
    tot, i = 0.0, 1
    while i < len(ids):
        end = min(len(ids), i + 64)
        start = max(0, end - 65)
        logits = np.asarray(model.forward(np.asarray([ids[start:end - 1]], np.int64))[0], np.float64)
        for t in range(i, end):
            row = logits[t - 1 - start]
            m = row.max()
            tot += row[ids[t]] - (m + math.log(np.exp(row - m).sum()))
        i = end
    return tot


def test_lm_eval_adapter_errors(models):
    pytest.importorskip("lm_eval")
    from awq.lm_eval_adapter import AWQLM

    _, fp, _ = models
    with pytest.raises(ValueError):
        AWQLM(None, None)
    lm = AWQLM(fp, CharTokenizer(), prefix_token_id=0)
    with pytest.raises(ValueError, match="no tokens"):
        lm.loglikelihood([_Req(("abc", ""))])


def test_lm_eval_model_name_with_pretrained_folder(models, tmp_path, monkeypatch):
    """simple_evaluate(model="awq", model_args="pretrained=<folder>") loads the folder and its
    tokenizer.json and scores as the adapter built from objects does."""
    lm_eval = pytest.importorskip("lm_eval")
    tokenizers = pytest.importorskip("tokenizers")
    import shutil

    from lm_eval.tasks import TaskManager

    from awq.lm_eval_adapter import AWQLM

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    folder, fp, _ = models
    d = tmp_path / "with_tok"
    shutil.copytree(folder, d)
    # a character-level tokenizer.json whose ids are the bytes (the tiny model's vocabulary)
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({chr(i): i for i in range(32, 127)}, unk_token="?"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Split(tokenizers.Regex("."), behavior="isolated")
    tok.save(str(d / "tokenizer.json"))
    rows = [{"q": "The cat sat on the", "choices": [" mat", " sky", " sea"], "a": 0},
            {"q": "Water is", "choices": [" wet", " dry", " red"], "a": 2}]
    _task(tmp_path, "awq_local_mc2", "output_type: multiple_choice\ndoc_to_text: '{{q}}'\n"
          "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{a}}'\nmetric_list:\n  - metric: acc\n", rows)
    tm = TaskManager(include_path=str(tmp_path))
    by_name = lm_eval.simple_evaluate(model="awq", model_args=f"pretrained={d},prefix_token_id=0,max_length=64",
                                      tasks=["awq_local_mc2"], task_manager=tm, bootstrap_iters=0)
    by_obj = lm_eval.simple_evaluate(model=AWQLM(fp, CharTokenizer(), max_length=64, prefix_token_id=0),
                                     tasks=["awq_local_mc2"], task_manager=tm, bootstrap_iters=0)
    assert by_name["results"]["awq_local_mc2"]["acc,none"] == by_obj["results"]["awq_local_mc2"]["acc,none"]
