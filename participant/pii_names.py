"""Names of people in English and Chinese text, from context words, titles and small gazetteers.

No model: a name is taken when something around it says it is one.

English (capitalised words only):

- after a title ("Mr", "Dr", "Nurse", ...) or a context phrase that introduces a person ("Name:",
  "patient", "daughter", "signed by", "Dear", "my name is", ...): the capitalised words that follow;
- without context: a common given name followed by a capitalised word ("Jessica Brown"), an
  initial and a common surname ("J. Martinez"), "Surname, Given" ("HUGHES, Robert"), or a common
  given name on its own ("Ethan mobilised") when the name is not also an ordinary word ("May",
  "Will", "Grace": see ``pii_gazetteer_en.txt``);
- never when an eponym noun follows ("Parkinson's disease", "Murphy's sign", "Gleason score").

Chinese:

- after a context word (患者, 姓名, 家属, 医生, 客户, 持卡人, ...): a common surname and one or two
  given-name characters, cut before characters that do not occur in names here (因, 于, 诉, 今, ...);
- after a verb whose object is often a person (联系, 通知, 告知, 致电, ...): the same, when the
  name ends cleanly (end of text, punctuation, or a character that does not occur in names);
- before a title (先生, 女士, 医生, 主任, ...): the surname, with its given name if present;
- before "，男，45岁": a surname and given name;
- at the start of a sentence, before a word such as 今日 or 因 ("王芳今日复诊").
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from importlib import resources

from fedmask.participant.pii_patterns import RANK_NAME, Candidate


@functools.cache
def gazetteer(language: str, section: str) -> frozenset[str]:
    """The entries of one ``@section`` of ``pii_gazetteer_<language>.txt`` (shipped beside this module)."""
    resource = resources.files("fedmask.participant").joinpath(f"pii_gazetteer_{language}.txt")
    sections: dict[str, set[str]] = {}
    current: set[str] | None = None
    for raw in resource.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("@"):
            current = sections.setdefault(line[1:], set())
        elif current is not None:
            current.add(line)
    if section not in sections:
        raise KeyError(f"pii_gazetteer_{language}.txt has no section @{section}")
    return frozenset(sections[section])


def first_names() -> frozenset[str]:
    return gazetteer("en", "given_names") | gazetteer("en", "ambiguous_given_names")


def ambiguous_first_names() -> frozenset[str]:
    return gazetteer("en", "ambiguous_given_names")


def surnames() -> frozenset[str]:
    return gazetteer("en", "surnames")


def chinese_surnames() -> frozenset[str]:
    return gazetteer("zh", "surnames")


# --------------------------------------------------------------------------- English

_LOWER = "a-zà-öø-ÿ"
_WORD = rf"(?:(?:Mc|O'|D')?[A-Z][{_LOWER}]+(?:-[A-Z][{_LOWER}]+)*)"
_INITIAL = r"(?:[A-Z]\.)"
# A run of capitalised words and initials separated by single spaces.
_CAPITALISED_RUN = re.compile(rf"(?<![A-Za-z'’-])(?:{_WORD}|{_INITIAL})(?: (?:{_WORD}|{_INITIAL}))*(?![A-Za-z])")
_TOKEN = re.compile(rf"{_WORD}|{_INITIAL}")
# "Surname, Given": the surname may be written in capitals, as record systems do.
# A middle initial may follow ("SMITH, John A.").
_SURNAME_FIRST = re.compile(
    rf"(?<![A-Za-z])(?P<surname>{_WORD}|[A-Z]{{2,}}), (?P<given>{_WORD})(?: [A-Z]\.(?![A-Za-z]))?(?![A-Za-z])"
)

# Roles on forms: followed by a colon or a dash, the capitalised words after them are a name.
_ROLE_LABEL = (
    r"(?i:\b(?:coordinator|consultant|surgeon|physician|anaesthetist|anesthetist|clinician|therapist|physio"
    r"|pharmacist|midwife|nurse|rn|gp|doctor|registrar|intern|worker|officer|manager|clerk|informant|witness"
    r"|interpreter|contact|author|practitioner|specialist|keyworker|key worker|advocate|chaplain|dietitian"
    r"|radiographer|technician|paramedic|student|supervisor|sonographer|examiner|requester))[ \t]*[:\u2013-][ \t]*$"
)
_TITLES = ("Mr", "Mrs", "Ms", "Miss", "Mx", "Dr", "Prof", "Professor", "Nurse", "Sister", "Rev", "Doctor", "Madam")
_TITLE_BEFORE = re.compile(r"(?:\b(?:" + "|".join(_TITLES) + r")\.? +)$")
# Surnames with a lower-case particle after a title ("Mrs. van der Berg", "Dr de la Cruz").
_PARTICLE = r"(?:van|von|de|der|den|da|di|del|della|du|dos|das|le|la|ter|ten|bin|ibn|al|el)"
_TITLE_AND_PARTICLE_NAME = re.compile(
    r"\b(?:" + "|".join(_TITLES) + rf")\.? +(?P<name>{_PARTICLE}(?:[ -]{_PARTICLE})?[ -]{_WORD})(?![A-Za-z])"
)
# Context that introduces a person: whatever capitalised words follow are taken as the name.
_PERSON_CONTEXT_BEFORE = re.compile(
    r"(?i)(?:\b(?:name|patient|pt|signed(?: by)?|my name is|this is|i am|i'm|dear|hi|hello|account holder"
    r"|card ?holder|payee(?: name)?|beneficiary(?: name)?|next of kin|nok|attending|regards|thanks|thank you"
    r"|on behalf of|reviewed by|seen by|referred by|discussed with|spoke (?:to|with)|son|daughter|wife"
    r"|husband|partner|mother|father|mum|mom|dad|brother|sister|carer|guardian|grandson|granddaughter"
    r"|niece|nephew|friend|neighbour|neighbor|named|called|customer|client|caller|applicant|claimant|tenant"
    r"|policyholder|resident|name is|(?:patient|pt) is|known as|goes by|(?:performed|reported|verified|authori[sz]ed"
    r"|approved|completed|taken|dictated|transcribed|witnessed|accompanied|escorted|requested|ordered|written"
    r"|prepared|checked) by|handed over to|handover (?:given )?to)\b)[ \t]*[:,(-]?[ \t]*(?:my [a-z]+,? )?$"
    # or a role written as a form label: "Care coordinator: ", "RN: ", "Physician - "
    rf"|{_ROLE_LABEL}"
)
# After these the next capitalised word is a name even when no gazetteer knows it ("her name is Rosa").
_STRONG_CONTEXT_BEFORE = re.compile(
    r"(?i)\b(?:name is|named|called|known as|goes by|i am|i'm|this is)[ \t]*$|(?i:\bname)[ \t]*:[ \t]*$"
)
# Words that say a name follows: there "Surname, Given" is a name without the gazetteers.
_NAME_FIELD_BEFORE = re.compile(
    r"(?i)\b(?:name|full name|surname|account holder|card ?holder|payee|beneficiary)[ \t]*[:.-]?[ \t]*$"
    rf"|{_ROLE_LABEL}"
)
# Relatives: after these, even a given name that is also a word is a name ("son Mark", "wife May").
_KIN_BEFORE = re.compile(
    r"(?i)\b(?:son|daughter|wife|husband|partner|mother|father|mum|mom|dad|brother|sister|grandson"
    r"|granddaughter|niece|nephew|named|called)[ \t]*[:,(]?[ \t]*$"
)
_EPONYM_AFTER = re.compile(r"(?:['’]s?)?(?: [A-Z][A-Za-z-]*)? (?P<noun>[A-Za-z]+)")  # "Glasgow Coma Scale"
# Saints and royals lend their names to hospitals and wards: "St Mary's", "Queen Elizabeth".
_NAMESAKE_BEFORE = re.compile(r"\b(?:St|Saint|Queen|King|Prince|Princess|Royal)\.? $")
_POSSESSIVE_AFTER = re.compile(r"['’]s?\b")


def _not_names() -> frozenset[str]:
    return gazetteer("en", "not_names") | frozenset(_TITLES)


def _is_eponym(text: str, tokens: list[re.Match[str]]) -> bool:
    end = tokens[-1].end()
    nouns, eponymous = gazetteer("en", "eponym_nouns"), gazetteer("en", "eponyms")
    following = _EPONYM_AFTER.match(text, end)
    if following is not None and following["noun"].lower() in nouns:
        return True
    if _NAMESAKE_BEFORE.search(text, max(0, tokens[0].start() - 10), tokens[0].start()):
        return True
    return tokens[-1].group(0) in eponymous and _POSSESSIVE_AFTER.match(text, end) is not None


def _segments(text: str, run: re.Match[str]) -> Iterator[list[re.Match[str]]]:
    """Split a capitalised run at titles, roles and other words that are no part of a name."""
    not_names = _not_names()
    segment: list[re.Match[str]] = []
    for token in _TOKEN.finditer(text, run.start(), run.end()):
        if token.group(0) in not_names:
            if segment:
                yield segment
            segment = []
        else:
            segment.append(token)
    if segment:
        yield segment


def _name_in_segment(text: str, segment: list[re.Match[str]]) -> list[re.Match[str]] | None:
    words = [token.group(0) for token in segment]
    is_word = [not word.endswith(".") for word in words]
    if not any(is_word):
        return None  # initials alone
    given, ambiguous, family = first_names(), ambiguous_first_names(), surnames()
    before = text[max(0, segment[0].start() - 40) : segment[0].start()]
    if _TITLE_BEFORE.search(before):
        return segment[:4]
    if _PERSON_CONTEXT_BEFORE.search(before):
        if len(segment) == 1 and (words[0] in ambiguous or words[0] not in given | family):
            # "Patient Will attend", "Dear Customer": one word that may be an ordinary one.
            if words[0] in ambiguous and _KIN_BEFORE.search(before):
                return segment  # "son Mark"
            if is_word[0] and _STRONG_CONTEXT_BEFORE.search(before):
                return segment  # "her name is Rosa", "Name: Okonkwo"
            return segment if words[0] in given - ambiguous or words[0] in family else None
        return segment[:4]
    # No context: start at the first common given name, or at an initial before a common surname.
    for index, word in enumerate(words):
        rest = words[index + 1 :]
        if word in given:
            if rest and is_word[index + 1] and (word not in ambiguous or rest[0] in family):
                return segment[index : index + 3]
            if rest and not is_word[index + 1] and len(rest) > 1 and rest[1] in family:
                return segment[index : index + 3]  # "John A. Smith"
            if word not in ambiguous and not rest:
                return segment[index : index + 1]
        if not is_word[index] and rest and rest[0] in family:
            return segment[index : index + 2]  # "J. Martinez"
    return None


# "spoke with john smith": lower case, taken only after a context word and when both words are in
# the gazetteers.
_LOWER_PAIR = re.compile(r"(?<![A-Za-z])(?P<given>[a-z]{2,}) (?P<family>[a-z]{2,})(?![A-Za-z])")


def _lower_case_names(text: str) -> Iterator[Candidate]:
    given, ambiguous, family = first_names(), ambiguous_first_names(), surnames()
    for match in _LOWER_PAIR.finditer(text):
        first, last = match["given"].title(), match["family"].title()
        if first in given and first not in ambiguous and last in family:
            if _PERSON_CONTEXT_BEFORE.search(text, max(0, match.start() - 40), match.start()):
                yield Candidate(match.start(), match.end(), "name", RANK_NAME)


def find_english_names(text: str) -> Iterator[Candidate]:
    yield from _lower_case_names(text)
    for run in _CAPITALISED_RUN.finditer(text):
        for segment in _segments(text, run):
            name = _name_in_segment(text, segment)
            if name and not _is_eponym(text, name):
                yield Candidate(name[0].start(), name[-1].end(), "name", RANK_NAME)
    for match in _TITLE_AND_PARTICLE_NAME.finditer(text):
        yield Candidate(match.start("name"), match.end("name"), "name", RANK_NAME)
    given, family = first_names(), surnames()
    for match in _SURNAME_FIRST.finditer(text):
        named = _NAME_FIELD_BEFORE.search(text, max(0, match.start() - 30), match.start())
        if named or (match["surname"].title() in family and match["given"] in given):
            yield Candidate(match.start(), match.end(), "name", RANK_NAME)


# --------------------------------------------------------------------------- Chinese

_CJK = "\u4e00-\u9fff"
_HAS_HAN = re.compile(f"[{_CJK}]")
# Characters that end a name here: function words, verbs, clinical words and units that follow
# a name or a surname-like character ("张伟因胸痛", "王芳今日", "高热", "曾于", "张老师").
_NOT_GIVEN_NAME = frozenset(
    "因于在的了今昨前后近自诉主入出来去经是为有无未已现行及和与同等到从由被把将对向说称述表示也都又再曾均仍还"
    "就即并而但或以所这那此其之年月日时岁男女性先医护老阿师院科床热血压糖脂龄危度钾钠温体病症痛咳喘吐泻胸"
    "腹头腰背肺肝肾胃肠感染炎癌瘤肿伤术药片针液查检验测量治疗诊断复转住室区号楼夜晨晚早午当次半凌上下本每多"
    "少双单左右全两个不没很较更最可能会要需应该请让给予拟按跟见看问答知告签字交代接送办"
    "理申致电话机码卡账户款额元钱费付汇存取开销冻结挂失盗刷醒睡怒续醉显身细疸案规侧型率次例段级位名氏天周"
    "拒陪携反突间持伴既发神精生心"
)
_ZH_CONTEXT = "|".join(
    (
        # patients and the people around them
        "患者家属|患者|病人|患儿|病员|姓名|家属|联系人|监护人|陪护人|陪护|配偶",
        "其母|其父|其妻|其夫|其子|其女|之妻|之夫|之子|之女|母亲|父亲|妻子|丈夫|儿子|女儿",
        "兄弟|姐妹|哥哥|姐姐|弟弟|妹妹",
        # staff
        "主治医生|主治医师|经治医生|经治医师|上级医生|上级医师|管床医生|值班医生|医生|医师|护士长|护士",
        "记录者|记录人|签名|签字人|签字|报告人|审核人|经手人|送检人",
        # people named on forms
        "就诊人|办理人|经办人|代办人|陪同人|取药人|投保人|被保险人|受益人|收件人|收货人|寄件人|发件人",
        # bank customers and payees
        "客户|持卡人|户名|收款人|付款人|开户人|账户名|申请人|委托人|代理人|转账给|汇款给|汇给|转给",
        # introducing oneself
        "我是|我叫|本人是|本人|名叫",
    )
)
# In a lookahead, so that overlapping context words are all tried ("其妻子孙秀兰": 其妻, then 妻子).
# Besides the words above, any form label that ends in 人, 员, 者 or 师 and a colon ("护理人员：",
# "汇款人：", "检查者：").
_ZH_CONTEXT_BEFORE = re.compile(rf"(?=(?P<context>(?:{_ZH_CONTEXT})[:\s]*|(?<=[{_CJK}])[人员者师]:\s*))")
# Verbs whose object is often a person ("请联系李明。", "已通知王芳"): weaker evidence than a
# form label, so the name must end cleanly there (end of text, punctuation, or a character that
# does not occur in names here) and not start with a word-like surname ("联系方式栏").
_ZH_VERBS = "联系|通知|告知|转告|致电|询问|拜访|感谢|交给|转交|咨询|联络"
_ZH_VERB_BEFORE = re.compile(rf"(?=(?P<context>(?:{_ZH_VERBS})(?:了|过)?))")
# A verb's object is as often a place as a person: "通知齐鲁医院", "联系林业局".
_ZH_INSTITUTION_AFTER = re.compile(r"医院|银行|公司|大学|学院|中心|集团|社区|街道|派出所|卫生|人民|医疗|诊所|药房|药店")
_ZH_INSTITUTION_ENDINGS = frozenset("局院所部科厅处站厂店行校司馆会社团组室")
_ZH_TITLES = re.compile(r"先生|女士|小姐|医生|医师|大夫|护士长|护士|主任|教授|老师|阿姨|叔叔|师傅|经理|院长|同志")
# Before a lone surname and a title, the character before must not make a word with the
# surname ("责任护士" is not nurse 任): it must be no Chinese character, or one of these.
_ZH_BOUNDARY_BEFORE = frozenset("请找问给向和与及由被让叫对跟将把的了是为位名称如经科室部组队谢小老")
_ZH_DEMOGRAPHICS_AFTER = re.compile(r"[,、\s(]*[男女][,、\s)]*\d{1,3}岁")
_ZH_SENTENCE_START = frozenset("。！？；\n!?;")
# After a name at the start of a sentence without any other context ("王芳今日复诊").
_ZH_NAME_FOLLOWERS = frozenset("今昨因于诉自前近入主来在已经反突仍要需致称说表目")


def _word_like_surnames() -> frozenset[str]:
    return gazetteer("zh", "word_like_surnames")


def _is_cjk(char: str) -> bool:
    return "\u4e00" <= char <= "\u9fff"


def _surname_at(text: str, position: int) -> int:
    """Length of the common surname starting at ``position`` (2 for 欧阳, 1 for 王), or 0."""
    known = chinese_surnames()
    if text[position : position + 2] in known:
        return 2
    if position < len(text) and text[position] in known:
        return 1
    return 0


def _given_name_length(text: str, position: int) -> int:
    """How many of the (at most two) characters at ``position`` can be a given name."""
    length = 0
    while length < 2 and position + length < len(text):
        char = text[position + length]
        if not _is_cjk(char) or char in _NOT_GIVEN_NAME:
            break
        length += 1
    return length


def _ends_cleanly(text: str, position: int) -> bool:
    return position >= len(text) or not _is_cjk(text[position]) or text[position] in _NOT_GIVEN_NAME


def _name_after_context(text: str, position: int, *, clean_end: bool = False) -> tuple[int, int] | None:
    surname = _surname_at(text, position)
    if not surname or any(text.startswith(word, position) for word in gazetteer("zh", "clinical_words")):
        return None  # 医师查房, 患者查体
    given = _given_name_length(text, position + surname)
    if given == 0:
        return None
    end = position + surname + given
    if surname == 1 and text[position] in _word_like_surnames():
        # 高热, 全身, 明显, 查体: only a full two-character given name that ends cleanly.
        if given < 2 or not _ends_cleanly(text, end):
            return None
    if clean_end and (not _ends_cleanly(text, end) or (surname == 1 and text[position] in _word_like_surnames())):
        return None  # weak context: no 方式栏 after 联系, whatever follows
    return position, end


def _name_before_title(text: str, title_start: int) -> tuple[int, int] | None:
    for length in (4, 3, 2, 1):
        start = title_start - length
        if start < 0:
            continue
        surname = _surname_at(text, start)
        if not surname or surname > length:
            continue
        given = length - surname
        if _given_name_length(text, start + surname) < given:
            continue
        word_like = surname == 1 and text[start] in _word_like_surnames()
        if word_like and given < 2:
            continue  # 左医生, 项目经理: more often a word than Dr Zuo or manager Xiang
        if given == 0 or word_like:
            previous = text[start - 1] if start > 0 else ""
            if previous and _is_cjk(previous) and previous not in _ZH_BOUNDARY_BEFORE:
                continue
        return start, title_start
    return None


def _at_boundary(text: str, position: int) -> bool:
    return position == 0 or not _is_cjk(text[position - 1])


def find_chinese_names(text: str) -> Iterator[Candidate]:
    if not _HAS_HAN.search(text):
        return
    for match in _ZH_CONTEXT_BEFORE.finditer(text):
        span = _name_after_context(text, match.end("context"))
        if span:
            yield Candidate(*span, "name", RANK_NAME)
    for match in _ZH_VERB_BEFORE.finditer(text):
        span = _name_after_context(text, match.end("context"), clean_end=True)
        if span and text[span[1] - 1] not in _ZH_INSTITUTION_ENDINGS and not _ZH_INSTITUTION_AFTER.match(text, span[1]):
            yield Candidate(*span, "name", RANK_NAME)
    for match in _ZH_TITLES.finditer(text):
        span = _name_before_title(text, match.start())
        if span:
            yield Candidate(*span, "name", RANK_NAME)
    for position, char in enumerate(text):
        if not _is_cjk(char) or not _at_boundary(text, position):
            continue
        surname = _surname_at(text, position)
        if not surname:
            continue
        # 高, 全, 明 ...: only with a full given name before "，男，70岁" ("高建国，男，70岁").
        word_like = surname == 1 and char in _word_like_surnames()
        given = _given_name_length(text, position + surname)
        for length in range(given, 1 if word_like else 0, -1):
            end = position + surname + length
            sentence_start = position == 0 or text[position - 1] in _ZH_SENTENCE_START
            if _ZH_DEMOGRAPHICS_AFTER.match(text, end) or (
                not word_like and sentence_start and end < len(text) and text[end] in _ZH_NAME_FOLLOWERS
            ):
                yield Candidate(position, end, "name", RANK_NAME)
                break


def find_names(text: str) -> Iterator[Candidate]:
    yield from find_english_names(text)
    yield from find_chinese_names(text)
