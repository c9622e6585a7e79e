"""Text tokenization outside a study: train a tokenizer, tokenize a corpus into shards, decode shards back.

    bpe_training.py          `arscale tokenizer train bpe|char|word`: byte-level BPE, or a character or word
                             vocabulary (armodels.char_word), on a corpus or an even sample of it
    corpus_to_shards.py      `arscale tokenize`: a corpus into Parquet token shards on Ray actors, resumable
    shards_to_documents.py   `arscale detokenize`: shards back to the exact bytes of their documents
    commands.py              the parsers and handlers of those commands (and of the image tokenizers')
    outputs.py               their --out folders: new or empty, written beside and renamed into place when complete

The study's `shards` step (pipelines/steps/text_shards.py) runs corpus_to_shards in its own process; the encoding
of one piece of a corpus is armodels.piece_encoder.
"""
