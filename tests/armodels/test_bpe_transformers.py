"""arscale's BPE tokenizer folders load in Hugging Face `transformers` and encode exactly as arscale does."""

import json

from transformers import AutoTokenizer, PreTrainedTokenizerFast

from armodels.bpe import END_OF_DOCUMENT, BPETokenizer, train_bpe
from armodels.shards import load_token_stream, tokenize_to_shards

HF_FILES = ("tokenizer_config.json", "special_tokens_map.json")


def test_transformers_loads_the_folder_and_encodes_as_arscale(tmp_path, tokenizer, stdlib_texts):
    tokenizer.save(tmp_path / "tok")
    hf = PreTrainedTokenizerFast.from_pretrained(str(tmp_path / "tok"))
    eod = tokenizer.eod_id
    assert (hf.eos_token, hf.bos_token) == (END_OF_DOCUMENT, END_OF_DOCUMENT)
    assert (hf.eos_token_id, hf.bos_token_id) == (eod, eod)
    assert hf.all_special_tokens == [END_OF_DOCUMENT] and len(hf) == tokenizer.vocab_size

    # real text, odd text, and a document that quotes the end-of-document string: arscale encodes it as bytes
    texts = [*stdlib_texts[:8], "中文 日本語 😀\r\n\t  trailing  ", f"a file that says {END_OF_DOCUMENT} in it\n"]
    ids = hf(texts).input_ids
    assert ids == tokenizer.encode_batch(texts)
    assert eod not in ids[-1]
    assert [hf.decode(row) for row in ids] == texts

    # documents separated as the shards separate them: each one followed by end-of-document
    tokenize_to_shards(tokenizer, texts, tmp_path / "shards", split="val")
    stream = [i for row in ids for i in (*row, hf.eos_token_id)]
    assert stream == load_token_stream(tmp_path / "shards").tolist()
    assert hf.decode(stream) == "".join(text + END_OF_DOCUMENT for text in texts)
    assert hf.decode(stream, skip_special_tokens=True) == "".join(texts)
    assert AutoTokenizer.from_pretrained(str(tmp_path / "tok"))(texts[0]).input_ids == ids[0]


def test_more_special_tokens_and_folders_without_the_files(tmp_path, stdlib_texts):
    bpe = train_bpe(stdlib_texts[:5], 300, special_tokens=(END_OF_DOCUMENT, "<|sep|>"))
    bpe.save(tmp_path / "tok")
    config = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    assert config["additional_special_tokens"] == ["<|sep|>"] and config["eos_token"] == END_OF_DOCUMENT
    hf = PreTrainedTokenizerFast.from_pretrained(str(tmp_path / "tok"))
    assert hf.all_special_tokens == [END_OF_DOCUMENT, "<|sep|>"]
    text = "x = 1 <|sep|> y"
    assert hf(text).input_ids == bpe.encode_batch([text])[0] and hf.decode(hf(text).input_ids) == text

    for name in HF_FILES:  # folders saved before these files existed still load in arscale and in transformers
        (tmp_path / "tok" / name).unlink()
    assert BPETokenizer.load(tmp_path / "tok").encode_batch([text]) == bpe.encode_batch([text])
    bare = PreTrainedTokenizerFast.from_pretrained(str(tmp_path / "tok"))
    assert bare("x = 1\n").input_ids == bpe.encode_batch(["x = 1\n"])[0]
    assert bare(text).input_ids != bpe.encode_batch([text])[0]  # what split_special_tokens in the config is for
