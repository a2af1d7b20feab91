"""The chat format: special tokens, the grown model, the loss mask, chat() and its bad inputs."""
import pytest
import torch
import torch.nn.functional as F

from slm_lab import chat
from slm_lab.checkpoint import load_checkpoint, save_checkpoint
from slm_lab.data import get_batch, step_generator
from slm_lab.errors import SLMLabError
from slm_lab.model import SLM, SLMConfig
from slm_lab.chat import ChatTokenizer
from slm_lab.tokenizer import CharTokenizer, tokenizer_from_dict
from slm_lab.train import TrainConfig

TEXT = "the quick brown fox jumps over the lazy dog. SPEAK? yes!"


def tiny(seed=0, vocab=None):
    torch.manual_seed(seed)
    base = CharTokenizer(TEXT)
    return SLM(SLMConfig(family="llama", vocab_size=base.vocab_size, block_size=64, n_layer=1, n_head=2,
                         d_model=16)).eval(), base


def test_chat_tokenizer_round_trips_and_gives_each_special_one_id():
    base = CharTokenizer(TEXT)
    tok = ChatTokenizer(base, chat.SPECIALS)
    text = chat.format_turn("fox?", "dog.")
    ids = tok.encode(text)
    assert ids[0] == base.vocab_size and ids[-1] == base.vocab_size + 2 and ids.count(base.vocab_size + 1) == 1
    assert len(ids) == len("fox?") + len("dog.") + 3 and tok.decode(ids) == text
    assert tokenizer_from_dict(tok.to_dict()).encode(text) == ids
    with pytest.raises(SLMLabError, match="not in this tokenizer's vocabulary"):
        tok.encode(chat.format_turn("é", "x"))


def test_added_rows_are_the_mean_and_old_logits_do_not_move():
    model, base = tiny()
    ids = torch.tensor([base.encode("the lazy dog")])
    with torch.no_grad():
        before = model(ids).logits
    old = model.tok_emb.weight.detach().clone()
    model, tok = chat.add_chat_tokens(model, base)
    assert model.cfg.vocab_size == tok.vocab_size == base.vocab_size + 3
    assert torch.allclose(model.tok_emb.weight[-3:], old.mean(0).expand(3, -1))
    assert model.lm_head.weight is model.tok_emb.weight                        # still tied
    with torch.no_grad():
        after = model(ids).logits
    assert torch.allclose(after[..., : base.vocab_size], before, atol=1e-6)
    with pytest.raises(SLMLabError, match="already has the chat tokens"):
        chat.add_chat_tokens(model, tok)


def test_a_grown_model_saves_and_loads_with_the_ordinary_checkpoint(tmp_path):
    model, tok = chat.add_chat_tokens(*tiny())
    save_checkpoint(tmp_path / "ck", model, tok)
    ck = load_checkpoint(tmp_path / "ck")
    assert isinstance(ck.tokenizer, ChatTokenizer) and ck.model.cfg.vocab_size == tok.vocab_size
    ids = torch.tensor([tok.encode(chat.format_turn("fox", "dog"))])
    with torch.no_grad():
        assert torch.equal(ck.model(ids).logits, model(ids).logits)


def test_labels_cover_the_answer_and_its_end_token_only():
    model, tok = chat.add_chat_tokens(*tiny())
    ids, labels = chat.encode_example(tok, "fox?", "dog.")
    first = ids.index(tok.special_ids[chat.ASSISTANT]) + 1          # the first token the assistant says
    assert labels[:first] == [chat.IGNORE] * first
    assert labels[first:] == ids[first:] and tok.decode(ids[first:]) == "dog." + chat.END
    with pytest.raises(SLMLabError, match="answer .* is empty"):
        chat.encode_example(tok, "fox?", "")


def test_masked_loss_is_the_cross_entropy_of_the_answer_positions_of_the_same_batch():
    model, tok = chat.add_chat_tokens(*tiny())
    examples = [("the fox?", "dog."), ("yes?", "no!"), ("over the lazy dog", "SPEAK")] * 8
    ids, labels = chat.sft_stream(tok, examples, 64)
    cfg = TrainConfig(batch_size=4, seed=3)
    x, y = get_batch(ids, 4, 16, step_generator(3, 7, 0))
    got = chat.masked_loss(labels, cfg)(model, x, y, 7, 0)
    # independently: the batch's start positions (drawn from the same generator over positions), then labels
    pos, _ = get_batch(torch.arange(len(ids)), 4, 16, step_generator(3, 7, 0))
    target = labels[pos + 1]
    assert torch.equal(ids[pos], x) and (target == chat.IGNORE).any() and (target != chat.IGNORE).any()
    keep = target != chat.IGNORE
    want = F.cross_entropy(model(x).logits[keep], target[keep])
    assert torch.allclose(got, want)
    # with nothing masked it is the model's own loss
    assert torch.allclose(chat.masked_loss(ids, cfg)(model, x, y, 7, 0), model(x, y).loss)


def test_chat_answers_greedily_and_refuses_bad_input_in_one_line():
    model, base = tiny()
    with pytest.raises(SLMLabError, match="no chat tokens") as err:
        chat.chat(model, base, "fox?")
    assert "\n" not in str(err.value)
    grown, tok = chat.add_chat_tokens(model, base)
    answer = chat.chat(grown, tok, "fox?", max_new_tokens=5)
    assert isinstance(answer, str) and len(answer) <= 5 and chat.END not in answer
    with pytest.raises(SLMLabError, match="the model's context is 64"):
        chat.chat(grown, tok, "fox " * 20)
    with pytest.raises(SLMLabError, match="not in this tokenizer's vocabulary"):
        chat.chat(grown, tok, "zèbre")
    other, _ = tiny(seed=1)                                    # a checkpoint without chat tokens, chat tokenizer
    with pytest.raises(SLMLabError, match="the model has .* tokens but the chat tokenizer"):
        chat.chat(other, tok, "fox?")
    with pytest.raises(SLMLabError, match="more than the context of 64"):
        chat.sft_stream(tok, [("fox " * 20, "dog")], 64)


def test_greedy_chat_equals_decoding_without_the_cache():
    grown, tok = chat.add_chat_tokens(*tiny(seed=2))
    ids = tok.encode(chat.format_turn("the fox?"))
    seq = list(ids)
    with torch.no_grad():
        for _ in range(6):
            nxt = int(grown(torch.tensor([seq])).logits[0, -1].argmax())
            if nxt == tok.special_ids[chat.END]:
                break
            seq.append(nxt)
    assert chat.chat(grown, tok, "the fox?", max_new_tokens=6) == tok.decode(seq[len(ids):])


def test_finetune_with_the_mask_learns_the_answers():
    """A few steps of masked SFT lower the loss on the answers (chat.answer_loss) of the training turns."""
    from slm_lab import instruct, sft

    model, tok = chat.add_chat_tokens(*tiny(seed=5))
    examples = [instruct.Example("x", p, a) for p, a in
                [("fox?", "dog."), ("yes?", "no!"), ("the lazy", "dog"), ("SPEAK?", "yes")] * 16]
    pairs = [(e.prompt, e.answer) for e in examples]
    before = chat.answer_loss(model, tok, pairs)
    sft.finetune(model, tok, examples, examples, max_steps=30, batch_size=8, lr=1e-2, warmup_steps=2,
                 eval_interval=30, progress=False, block_size=32)
    assert chat.answer_loss(model, tok, pairs) < 0.5 * before
