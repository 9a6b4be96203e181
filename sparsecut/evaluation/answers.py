"""Answer normalisation of the official VQA evaluation and of the EvalAI answer processor.

Both follow ``vqaEval.py`` of GT-Vision-Lab/VQA (master, commit a013f00) and, for the EvalAI variant, the
``EvalAIAnswerProcessor`` LLaVA ships in ``llava/eval/m4c_evaluator.py`` (from facebookresearch/mmf). The quirks of
those scripts are kept on purpose, because they decide the published numbers:

- ``PERIOD_STRIP`` reads ``(?!<=\\d)``, a look-*ahead* for the text ``<=digit`` (a typo for a look-behind), so it
  deletes every period that is not followed by a digit: ``"5."`` -> ``"5"``, ``"3.5"`` stays, ``"a.b"`` -> ``"ab"``.
- The official script passes ``re.UNICODE`` (= 32) as ``count`` of ``sub``: at most 32 periods are removed.
- A punctuation mark is deleted when it touches a space (``"p "`` or ``" p"`` anywhere in the text) or when the
  text contains digit-comma-digit (``"1,000"``); otherwise it becomes a space (``"red/blue"`` -> ``"red blue"``).
  The apostrophe and the colon are not in the list: ``"don't"`` and ``"10:30"`` survive.
- Number words map to digits only from ``none``/``zero`` to ``ten``, whole words only (``none`` -> ``0``).
- Words are lower-cased before the contractions table is consulted, so its capitalised keys (``Im``, ``Ive``,
  ``Id've``, ``I'dve``) never match, and ``somebody'd`` maps to ``somebodyd`` (sic).
"""

from __future__ import annotations

import re

# key value pairs, separated by "|": the contractions table of vqaEval.py (identical in the EvalAI processor)
_CONTRACTION_PAIRS = """
aint ain't | arent aren't | cant can't | couldve could've | couldnt couldn't | couldn'tve couldn't've |
couldnt've couldn't've | didnt didn't | doesnt doesn't | dont don't | hadnt hadn't | hadnt've hadn't've |
hadn'tve hadn't've | hasnt hasn't | havent haven't | hed he'd | hed've he'd've | he'dve he'd've | hes he's |
howd how'd | howll how'll | hows how's | Id've I'd've | I'dve I'd've | Im I'm | Ive I've | isnt isn't | itd it'd |
itd've it'd've | it'dve it'd've | itll it'll | let's let's | maam ma'am | mightnt mightn't | mightnt've mightn't've |
mightn'tve mightn't've | mightve might've | mustnt mustn't | mustve must've | neednt needn't | notve not've |
oclock o'clock | oughtnt oughtn't | ow's'at 'ow's'at | 'ows'at 'ow's'at | 'ow'sat 'ow's'at | shant shan't |
shed've she'd've | she'dve she'd've | she's she's | shouldve should've | shouldnt shouldn't |
shouldnt've shouldn't've | shouldn'tve shouldn't've | somebody'd somebodyd | somebodyd've somebody'd've |
somebody'dve somebody'd've | somebodyll somebody'll | somebodys somebody's | someoned someone'd |
someoned've someone'd've | someone'dve someone'd've | someonell someone'll | someones someone's |
somethingd something'd | somethingd've something'd've | something'dve something'd've | somethingll something'll |
thats that's | thered there'd | thered've there'd've | there'dve there'd've | therere there're | theres there's |
theyd they'd | theyd've they'd've | they'dve they'd've | theyll they'll | theyre they're | theyve they've |
twas 'twas | wasnt wasn't | wed've we'd've | we'dve we'd've | weve we've | werent weren't | whatll what'll |
whatre what're | whats what's | whatve what've | whens when's | whered where'd | wheres where's | whereve where've |
whod who'd | whod've who'd've | who'dve who'd've | wholl who'll | whos who's | whove who've | whyll why'll |
whyre why're | whys why's | wont won't | wouldve would've | wouldnt wouldn't | wouldnt've wouldn't've |
wouldn'tve wouldn't've | yall y'all | yall'll y'all'll | y'allll y'all'll | yall'd've y'all'd've |
y'alld've y'all'd've | y'all'dve y'all'd've | youd you'd | youd've you'd've | you'dve you'd've | youll you'll |
youre you're | youve you've
"""
CONTRACTIONS: dict[str, str] = dict(pair.split() for pair in _CONTRACTION_PAIRS.split("|"))
NUMBER_WORDS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
NUMBER_WORDS["none"] = "0"
ARTICLES = ("a", "an", "the")
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: see the module docstring
COMMA_STRIP = re.compile(r"(\d)(,)(\d)")  # vqaEval.py
EVALAI_COMMA_STRIP = re.compile(r"(?<=\d)(,)+(?=\d)")  # the EvalAI processor's variant (one or more commas)
PERIOD_STRIP_COUNT = 32  # re.UNICODE, passed by the official script as the count argument of sub()


def clean_whitespace(text: str) -> str:
    """Newlines and tabs to spaces, outer whitespace stripped (applied to every answer before anything else)."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def strip_punctuation(text: str, comma_pattern: re.Pattern = COMMA_STRIP) -> str:
    """vqaEval's ``processPunctuation``: delete or space out ``PUNCTUATION``, then drop periods not before a digit."""
    delete_all = comma_pattern.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        if delete_all or mark + " " in text or " " + mark in text:  # the tests read the input, not ``out``
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return PERIOD_STRIP.sub("", out, count=PERIOD_STRIP_COUNT)


def normalise_words(text: str) -> str:
    """vqaEval's ``processDigitArticle``: lower case, number words to digits, articles dropped, contractions fixed."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def evalai_normalise(answer: str) -> str:
    """The EvalAI answer processor (LLaVA's ``EvalAIAnswerProcessor``), applied to every answer unconditionally:
    lower case, commas and question marks removed, ``'s`` split off, then the two official steps."""
    text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = strip_punctuation(clean_whitespace(text), EVALAI_COMMA_STRIP)
    return normalise_words(text)
