"""Decoding speed: our trie-constrained beam search against HF ``generate``.

The model is the paper-size T5 (4+4 layers, d_model 128, 6 heads of 64, d_ff 1024) with
random weights: the FLOPs of decoding do not depend on the weights. What random weights do
change is the shape of the beams (near-uniform next-token distributions), so agreement is
checked here and exactness is the unit tests' job. The catalogue is the real Instruments
image codes (6,250 items, 4 levels) and the inputs are real test histories (last 20 items).

    python benchmarks/decode_speed.py --users 256 --hf_users 128 --beam 20
    python benchmarks/decode_speed.py --authors_vocab   # HF baseline on the 34k-word vocabulary
    python benchmarks/decode_speed.py --device cuda --users 4096 --batch 1024 --authors_vocab \
        --data .gpu_data/Instruments --json decode.json

On a shared machine run it with OMP_WAIT_POLICY=PASSIVE (or --threads 1): with more runnable
threads than cores, OpenMP's spinning threads stall every parallel op, which cost our decoder
3-6x here (many short parallel ops) and HF's generate far less (mostly Python).
"""

import argparse
import gzip
import json
import os
import sys
import time

import torch
from transformers import T5Config, T5ForConditionalGeneration

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a checkout
from dataset_prep.code_tokens import parse_token
from recbole_mql.model.beam_search import ConstrainedBeamSearch
from recbole_mql.model.prefix_trie import PrefixTrie
from recbole_mql.model.tokenizer import EOS_ID as EOS
from recbole_mql.model.tokenizer import QuantitativeLanguage
from recbole_mql.precision import machine_line

DEFAULT_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "Instruments")
MODALITY = "image"  # the catalogue: image code tokens <A_i><B_j><C_k><D_l>
AUTHORS_BASE_VOCAB = 32128  # t5-small's vocabulary, onto which the authors add the code tokens


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="folder with Instruments.index_vitemb.json etc.")
    parser.add_argument("--users", type=int, default=256, help="users decoded by our beam search")
    parser.add_argument("--hf_users", type=int, default=128, help="users decoded by HF generate (slow)")
    parser.add_argument("--beam", type=int, default=20)
    parser.add_argument("--batch", type=int, default=256, help="users per call of our beam search")
    parser.add_argument("--hf_batch", type=int, default=64, help="users per HF generate call (authors: 64)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the best is reported (shared machine)")
    parser.add_argument("--authors_vocab", action="store_true", help="also time HF on the 34k-word vocabulary")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    return parser.parse_args()


def our_vocabulary(levels):
    """(vocabulary size, LongTensor ``[levels, codebook]`` of the image code ids) of our quantitative
    language as MQL4GRec builds it (its default ``code_max_levels`` and ``codebook_size``)."""
    language = QuantitativeLanguage()
    return len(language), language.level_token_ids(MODALITY, levels)


def authors_vocabulary(levels):
    """The same for the authors' layout: t5-small's words, then text and image code tokens of ``levels`` levels."""
    language = QuantitativeLanguage(max_levels=levels)
    code_ids = language.level_token_ids(MODALITY, levels) - language.code_offset + AUTHORS_BASE_VOCAB
    return AUTHORS_BASE_VOCAB + len(language) - language.code_offset, code_ids


def load_codes(data_dir):
    """LongTensor ``[n_items, 4]`` of image code indices; row i is item i."""
    with open(os.path.join(data_dir, "Instruments.index_vitemb.json")) as f:
        index = json.load(f)
    rows = []
    for item in range(len(index)):
        tokens = index[str(item)]
        rows.append([parse_token(tok)[1] for tok in tokens])
    return torch.tensor(rows)


def load_histories(data_dir, codes, token_ids, max_items=20):
    """Test users' last ``max_items`` items as code tokens + eos: ids, mask ``[users, src_len]``."""
    path = os.path.join(data_dir, "Instruments.test.inter")
    if not os.path.isfile(path) and os.path.isfile(path + ".gz"):  # the shipped test slices are gzipped
        path += ".gz"
    with (gzip.open if path.endswith(".gz") else open)(path, "rt") as f:
        lines = f.read().splitlines()[1:]
    levels = torch.arange(codes.shape[1])
    sequences = []
    for line in lines:
        items = [int(i) for i in line.split("\t")[1].split()][-max_items:]
        tokens = token_ids[levels, codes[items]].flatten().tolist() + [EOS]
        sequences.append(tokens)
    width = max(len(s) for s in sequences)
    input_ids = torch.zeros(len(sequences), width, dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = torch.tensor(seq)
    return input_ids, (input_ids != 0).long()


def paper_model(vocab_size, seed):
    """The paper's T5 backbone with random weights, in eval mode."""
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=vocab_size, d_model=128, d_ff=1024, num_layers=4, num_decoder_layers=4, num_heads=6,
        d_kv=64, dropout_rate=0.1, relative_attention_num_buckets=32, feed_forward_proj="relu",
        pad_token_id=0, eos_token_id=EOS, decoder_start_token_id=0,
    )
    return T5ForConditionalGeneration(config).eval()


def batches(input_ids, mask, size):
    for start in range(0, input_ids.shape[0], size):
        ids, m = input_ids[start : start + size], mask[start : start + size]
        width = int(m.sum(1).max())  # drop the columns that are padding for the whole batch
        yield ids[:, :width], m[:, :width]


def run_ours(model, token_ids, trie, input_ids, mask, beam, batch):
    """Items, scores ``[users, beam]`` from our beam search."""
    search = ConstrainedBeamSearch(model, token_ids)
    results = [search.search(ids, m, trie, beam) for ids, m in batches(input_ids, mask, batch)]
    return torch.cat([r[0] for r in results]).cpu(), torch.cat([r[1] for r in results]).cpu()


def run_hf(model, token_ids, trie, input_ids, mask, beam, batch):
    """Items, scores ``[users, beam]`` from HF generate with a real-trie prefix_allowed_tokens_fn."""
    allowed = trie.prefix_allowed_tokens_fn(token_ids)
    device = next(model.parameters()).device
    levels = trie.num_levels
    items, scores = [], []
    for ids, m in batches(input_ids, mask, batch):
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids.to(device), attention_mask=m.to(device), num_beams=beam, num_return_sequences=beam,
                max_new_tokens=levels, prefix_allowed_tokens_fn=allowed, do_sample=False, length_penalty=1.0,
                early_stopping=True, output_scores=True, return_dict_in_generate=True,
            )
        generated = out.sequences[:, 1 : 1 + levels].cpu() - token_ids[:, :1].T  # vocab id -> code index
        items.append(trie.lookup(generated).view(-1, beam))
        scores.append(out.sequences_scores.cpu().view(-1, beam))
    return torch.cat(items), torch.cat(scores)


def best_times(runs, repeats):
    """``{name: (best wall seconds, result)}`` for ``runs`` (``{name: fn}``).

    The machine is shared: the runs take turns, so that a busy spell hits all of them, and
    each keeps its best time.
    """
    best = {name: (float("inf"), None) for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            result = fn()
            if torch.cuda.is_available():  # the clock stops when the GPU is done
                torch.cuda.synchronize()
            best[name] = (min(best[name][0], time.perf_counter() - start), result)
    return best


def agreement(ours, theirs):
    """Fraction of users whose top-B item lists are identical, and the largest score gap."""
    n = theirs[0].shape[0]
    same = (ours[0][:n] == theirs[0]).all(dim=1).float().mean().item()
    finite = torch.isfinite(theirs[1])
    gap = (ours[1][:n][finite] - theirs[1][finite]).abs().max().item()
    return same, gap


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    codes = load_codes(args.data)
    trie = PrefixTrie(codes)
    vocab, token_ids = our_vocabulary(codes.shape[1])
    input_ids, mask = load_histories(args.data, codes, token_ids)
    n_ours = min(args.users, input_ids.shape[0])
    n_hf = min(args.hf_users, n_ours)
    print(machine_line())
    device = torch.cuda.get_device_name(args.device) if torch.device(args.device).type == "cuda" else "cpu"
    print(f"device {device}, threads {torch.get_num_threads()}, catalogue {trie.num_items} items, "
          f"vocab {vocab}, beam {args.beam}, random weights")

    model = paper_model(vocab, args.seed).to(args.device)
    runs = {
        "ours": lambda: run_ours(model, token_ids, trie, input_ids[:n_ours], mask[:n_ours], args.beam, args.batch),
        # The speed-up is taken on exactly HF's users: throughput depends on history lengths.
        "ours_same": lambda: run_ours(model, token_ids, trie, input_ids[:n_hf], mask[:n_hf], args.beam, args.batch),
        "hf": lambda: run_hf(model, token_ids, trie, input_ids[:n_hf], mask[:n_hf], args.beam, args.hf_batch),
    }
    if args.authors_vocab:
        authors_vocab, authors_ids = authors_vocabulary(codes.shape[1])
        authors_inputs, _ = load_histories(args.data, codes, authors_ids)
        big = paper_model(authors_vocab, args.seed).to(args.device)
        runs["hf_authors"] = lambda: run_hf(
            big, authors_ids, trie, authors_inputs[:n_hf], mask[:n_hf], args.beam, args.hf_batch)
    timed = best_times(runs, args.repeats)
    (t_ours, ours), (t_same, _), (t_hf, hf) = timed["ours"], timed["ours_same"], timed["hf"]
    same, gap = agreement(ours, hf)
    print(f"ours: {n_ours / t_ours:8.1f} users/s on {n_ours} users, {n_hf / t_same:8.1f} on HF's {n_hf} "
          f"(batch {args.batch})")
    print(f"HF  : {n_hf / t_hf:8.1f} users/s on {n_hf} users (batch {args.hf_batch})")
    print(f"speed-up {t_hf / t_same:.1f}x on the same users; identical top-{args.beam} lists for "
          f"{same:.1%} of {n_hf} users, max score gap {gap:.2e}")
    figures = {"benchmark": "decode_speed", "device": device, "machine": machine_line(), "torch": torch.__version__,
               "beam": args.beam, "users": n_ours, "hf_users": n_hf, "batch": args.batch, "hf_batch": args.hf_batch,
               "repeats": args.repeats, "users_per_s": {"ours": n_ours / t_ours, "ours_on_hf_users": n_hf / t_same,
                                                        "hf_generate": n_hf / t_hf},
               "ratio_vs_hf_generate": t_hf / t_same, "identical_top_lists": same, "max_score_gap": gap}
    if args.authors_vocab:
        t_big = timed["hf_authors"][0]
        print(f"HF, authors' {authors_vocab}-word vocabulary: {n_hf / t_big:8.1f} users/s "
              f"(a different random model); ours is {t_big / t_same:.1f}x faster")
        figures["users_per_s"]["hf_generate_authors_vocab"] = n_hf / t_big
        figures["ratio_vs_authors"] = t_big / t_same
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
