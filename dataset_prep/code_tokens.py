"""Code tokens of the quantitative language, written and read in this one place.

A token is ``<{letter}_{index}>``: the letter names the modality and the level (text codes use
``a, b, c, ...``, image codes ``A, B, C, ...``; level 0 is ``a`` / ``A``), the index is the code at
that level. An item's code is the sequence of its levels' tokens: ``<a_12><b_3><c_0><d_200>``.
"""

import re

MODALITY_LETTERS = {"text": "abcdefgh", "image": "ABCDEFGH"}
_TOKEN = re.compile(r"^<([A-Za-z])_(\d+)>$")
_ANY_TOKEN = re.compile(r"<[^>]*>")


def level_letter(modality, level):
    """The letter of ``level`` (0-based) in ``modality``: ``("text", 0)`` -> ``"a"``."""
    letters = MODALITY_LETTERS[modality]
    if not 0 <= level < len(letters):
        raise ValueError(f"level {level} out of range: the quantitative language has {len(letters)} levels.")
    return letters[level]


def letter_token(letter, index):
    """``("a", 12)`` -> ``"<a_12>"``."""
    return f"<{letter}_{int(index)}>"


def format_token(modality, level, index):
    """``("image", 1, 7)`` -> ``"<B_7>"``."""
    return letter_token(level_letter(modality, level), index)


def format_code(modality, indices):
    """Code indices of one item, level by level -> its tokens: ``("text", [12, 3])`` -> ``["<a_12>", "<b_3>"]``."""
    return [format_token(modality, level, index) for level, index in enumerate(indices)]


def parse_token(token):
    """``"<a_12>"`` -> ``("a", 12)``; None for anything else."""
    m = _TOKEN.match(str(token))
    return (m.group(1), int(m.group(2))) if m else None


def split_tokens(code):
    """Tokens of a code given as a list or as one string (``"<a_1><b_2>"`` or ``"<a_1> <b_2>"``)."""
    return _ANY_TOKEN.findall(code) if isinstance(code, str) else list(code)


def next_level_letter(letter):
    """The letter of the level after ``letter``'s, same case: ``"d"`` -> ``"e"`` (a collision-breaking level)."""
    return chr(ord(letter) + 1)


def letters_modality(letters):
    """The modality of a code file from its level letters: "text" when all are lower-case, "image" when all
    are upper-case, None when they mix."""
    if all(letter.islower() for letter in letters):
        return "text"
    if all(letter.isupper() for letter in letters):
        return "image"
    return None


def letter_modality(letter):
    """``"a"`` -> ``"text"``, ``"A"`` -> ``"image"``; None for a letter of neither."""
    for modality, letters in MODALITY_LETTERS.items():
        if letter in letters:
            return modality
    return None
