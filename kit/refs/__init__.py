"""Reference packs: ship reference clips bit-exactly (lossless codec + sha256 of the raw frames).

manifest (refs.json, the format), frames (raw-frame hashing, shared plumbing), pack, unpack, verify.
See docs/refs.md.
"""
