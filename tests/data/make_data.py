"""Write the small data that every clone's tests read: `python tests/data/make_data.py` (stdlib only, deterministic).

The real corpora live in ../shared, which developers and CI have beside the checkout and a user's clone does not;
the tests that read them are skipped there. These files let a clone still test the same behaviour, on text
generated here from word lists written for this file (nobody's copyrighted text):

- pages.jsonl.gz: 32 web-page-like documents, `{"id", "text"}`, 200 to ~7,000 characters: navigation bars,
  titles, paragraphs in 16 languages and scripts (Latin with diacritics, Cyrillic, Greek, Arabic, Hebrew,
  Devanagari, Thai and CJK without spaces, Hangul), lists, tab-separated tables, code, URLs, numbers, emoji,
  runs of mixed whitespace (non-breaking, ideographic, line and paragraph separators, CRLF), words longer than
  WordPiece keeps and a base64 blob; some open with long words, so that their first characters hold few
  tokens (fast_encode then tokenises them whole). Stands in for CLEANEVAL's pages (fast_encode's cut before tokenising)
  and DCLM's (packed against padded scoring with the bundled pair). Every fourth page is short; the others
  are over 2,560 characters (four times fast_encode's cut at 64 tokens) and over 512 tokens of the bundled
  pair's tokenizer.
- sources.jsonl.gz: six generated "sources" of 60 documents each, `{"id", "source", "text"}`: weather
  forecasts, recipes, football reports, Python code, contract clauses and market news. Each source is
  uniform and the sources differ, so a mixture of more sources is more diverse (semantic diversity's
  validation, as on ../shared's real sources).

tests/test_data.py checks that this script still writes exactly the committed files' contents.
"""

from __future__ import annotations

import gzip
import io
import json
import random
import string
from pathlib import Path

HERE = Path(__file__).resolve().parent

# ---------------------------------------------------------------------------------------------
# pages

WORDS = {
    "en": "the quality of a document depends on who wrote it and why river mountain library station morning "
          "evening council report market price garden window teacher student result village history program "
          "weather season harvest bridge engine network question answer careful quickly although because",
    "de": "Straße Brücke Übersicht Größe Mädchen Bäckerei Frühstück Schlüssel gemütlich Fußgängerzone Käse "
          "Zeitung Bahnhof Wetter heute morgen schön über für und mit nicht Donaudampfschifffahrtsgesellschaft",
    "fr": "école élève côté forêt hôpital naïve façade café garçon théâtre déjà très où près fenêtre rivière "
          "bibliothèque journée été hiver marché œuvre cœur Noël",
    "es": "niño señor mañana corazón canción jardín ciudad pequeño montaña árbol lámpara camión azúcar "
          "estación país también después ¿cómo ¡hola",
    "pl": "źródło żółw gęś łódź szczęście książka zażółć jaźń wiadomość rzeka miasto dzień noc",
    "ru": "город река книга утро вечер погода рынок учитель вопрос ответ история деревня мост сеть "
          "программа библиотека станция сегодня завтра хорошо",
    "el": "πόλη ποτάμι βιβλίο πρωί βράδυ καιρός αγορά δάσκαλος ερώτηση απάντηση ιστορία χωριό γέφυρα",
    "tr": "şehir ırmak kitap sabah akşam hava pazar öğretmen soru cevap tarih köy köprü ağ İstanbul ığdır",
    "vi": "thành phố dòng sông quyển sách buổi sáng buổi tối thời tiết chợ giáo viên câu hỏi trả lời lịch sử",
    "ar": "مدينة نهر كتاب صباح مساء طقس سوق معلم سؤال جواب تاريخ قرية جسر شبكة مكتبة محطة",
    "he": "עיר נהר ספר בוקר ערב מזג אוויר שוק מורה שאלה תשובה היסטוריה כפר גשר רשת ספרייה",
    "hi": "शहर नदी किताब सुबह शाम मौसम बाज़ार अध्यापक प्रश्न उत्तर इतिहास गाँव पुल पुस्तकालय स्टेशन",
    "ko": "도시 강 책 아침 저녁 날씨 시장 선생님 질문 대답 역사 마을 다리 도서관 역 오늘 내일",
}
# scripts written without spaces between words: a "paragraph" is a run of these, sentences end with their own stop
NOSPACE = {
    "zh": ("城市 河流 书籍 早晨 晚上 天气 市场 老师 问题 回答 历史 村庄 桥梁 网络 图书馆 车站 今天 明天 质量 文档", "。"),
    "ja": ("都市 川 本 朝 夜 天気 市場 先生 質問 答え 歴史 村 橋 ネットワーク 図書館 駅 今日 明日 です ます の は が を に", "。"),
    "th": ("เมือง แม่น้ำ หนังสือ ตอนเช้า ตอนเย็น อากาศ ตลาด ครู คำถาม คำตอบ ประวัติศาสตร์ หมู่บ้าน สะพาน ห้องสมุด สถานี", " "),
}
NAV = ["Home", "About", "Contact", "Login", "Register", "News", "Archive", "Impressum", "Datenschutz", "Accueil",
       "Контакты", "ホーム", "首页", "Search…", "Cart (0)", "FAQ", "Help"]
EMOJI = ["😀", "👍🏽", "🇩🇪", "❤️", "🚀", "👩‍💻", "☕", "✓", "→", "©", "™", "€", "½"]
SPACES = [" "] * 12 + ["  ", "\t", "\u00a0", " \u00a0", "\u3000", "\u2009", "\u202f"]
BREAKS = ["\n", "\n\n", "\n\n\n", "\r\n", "\n \n", "\u2028", "\u2029", "\n\t\n", " \n  "]
LONG_WORDS = ["supercalifragilisticexpialidocious" * 4, "Rindfleischetikettierungsüberwachungsaufgabenübertragungsgesetz",
              "pneumonoultramicroscopicsilicovolcanoconiosis", "x" * 130]
CODE = ["def add(a, b):\n    return a + b\n", "for (int i = 0; i < n; ++i) { sum += v[i]; }",
        "SELECT id, title FROM pages WHERE score > 0.5 ORDER BY score DESC;", "<div class=\"nav\"><a href=\"/\">Home</a></div>",
        "x = {\"key\": [1, 2, 3], 'other': None}  # a comment", "$ pip install --upgrade scalingfilter && echo ok"]


def _sentence(rng: random.Random, lang: str) -> str:
    if lang in NOSPACE:
        words, stop = NOSPACE[lang]
        w = words.split()
        return "".join(rng.choice(w) for _ in range(rng.randint(6, 18))) + stop
    w = WORDS[lang].split()
    out = []
    for _ in range(rng.randint(6, 16)):
        r = rng.random()
        if r < 0.04:
            out.append(str(rng.randint(0, 99999)) if rng.random() < 0.5 else f"{rng.uniform(0, 100):.2f}")
        elif r < 0.06:
            out.append(rng.choice(EMOJI))
        else:
            out.append(rng.choice(w))
    text = out[0] + "".join(rng.choice(SPACES) + x for x in out[1:])
    return text[:1].upper() + text[1:] + rng.choice([".", ".", "!", "?", " …", ";"])


def _paragraph(rng: random.Random, lang: str) -> str:
    return " ".join(_sentence(rng, lang if rng.random() < 0.85 else rng.choice(ALL_LANGS)) for _ in range(rng.randint(2, 6)))


ALL_LANGS = sorted(WORDS) + sorted(NOSPACE)


def _block(rng: random.Random, lang: str) -> str:
    r = rng.random()
    if r < 0.55:
        return _paragraph(rng, lang)
    if r < 0.65:  # a list
        return "\n".join(f"{rng.choice(['•', '-', '*', '1.', '·'])} {_sentence(rng, lang)}" for _ in range(rng.randint(2, 5)))
    if r < 0.72:  # a table
        return "\n".join("\t".join(rng.choice([_sentence(rng, lang)[:20], str(rng.randint(0, 999)), f"{rng.randint(1, 99)}\u00a0%"])
                                   for _ in range(4)) for _ in range(rng.randint(2, 4)))
    if r < 0.80:
        return rng.choice(CODE)
    if r < 0.86:
        return f"See https://example.{rng.choice(['org', 'com', 'de'])}/{rng.choice(WORDS['en'].split())}?id={rng.randint(1, 9999)}&lang={lang} for more."
    if r < 0.92:
        return f"{_sentence(rng, lang)} {rng.choice(LONG_WORDS)} {_sentence(rng, lang)}"
    if r < 0.95:  # a base64 blob: no whitespace for hundreds of characters
        return "data:image/png;base64," + "".join(rng.choice(string.ascii_letters + string.digits + "+/") for _ in range(rng.randint(150, 400)))
    return "   ".join(rng.sample(NAV, rng.randint(3, 7)))


def make_page(rng: random.Random, n: int) -> str:
    lang = ALL_LANGS[n % len(ALL_LANGS)] if n % 3 else "en"
    target = rng.randint(200, 1_500) if n % 4 == 3 else rng.randint(3_000, 7_000)
    parts = [" | ".join(rng.sample(NAV, rng.randint(3, 8))), _sentence(rng, "en").rstrip(".!?;… ").title(), _paragraph(rng, "en")]
    if n >= 16 and n % 4 == 2:  # opens with ~800 characters of words WordPiece makes one [UNK] of: few tokens before fast_encode's cut
        parts.insert(1, " ".join(rng.choice([w for w in LONG_WORDS if len(w) > 100]) for _ in range(6)))
    while sum(map(len, parts)) < target:
        parts.append(_block(rng, lang))
    parts.append(f"© {rng.randint(1998, 2024)} Example Ltd. All rights reserved. | Privacy | Terms")
    text = parts[0]
    for p in parts[1:]:
        text += rng.choice(BREAKS) + p
    return text


def make_pages(n: int = 32, seed: int = 20240) -> list[dict]:
    rng = random.Random(seed)
    return [{"id": f"page-{i}", "text": make_page(rng, i)} for i in range(n)]


# ---------------------------------------------------------------------------------------------
# sources: six uniform genres

CITIES = ["Leeds", "Lyon", "Porto", "Graz", "Turin", "Bergen", "Cork", "Ghent", "Malmö", "Brno", "Split", "Aarhus"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
TEAMS = ["Rovers", "United", "Athletic", "Wanderers", "City", "Albion", "Rangers", "Town", "Harriers", "Villa"]
NAMES = ["Okafor", "Lindqvist", "Moreau", "Kowalski", "Haddad", "Silva", "Brennan", "Novak", "Rossi", "Tanaka"]
COMPANIES = ["Northwind Corp", "Acme Industries", "Globex", "Initech", "Umbrella Holdings", "Stark Metals", "Wayne Freight"]


def _weather(r: random.Random) -> str:
    hi = r.randint(-5, 32)
    return (f"Forecast for {r.choice(CITIES)} on {r.choice(DAYS)}: {r.choice(['sunny', 'cloudy', 'overcast', 'showery', 'foggy', 'clear'])} "
            f"skies with a high of {hi}°C and a low of {hi - r.randint(3, 12)}°C. Winds from the {r.choice(['north', 'south', 'east', 'west', 'north-west'])} "
            f"at {r.randint(5, 60)} km/h, {r.choice(['easing in the evening', 'gusting at times', 'strengthening overnight'])}. "
            f"Chance of rain {r.randint(0, 100)}%. Humidity {r.randint(30, 99)}%, pressure {r.randint(980, 1040)} hPa. "
            f"{r.choice(['UV index moderate.', 'Pollen count high.', 'Frost possible in rural areas.', 'Visibility good.'])} "
            f"Sunrise {r.randint(5, 8)}:{r.randint(10, 59)}, sunset {r.randint(16, 21)}:{r.randint(10, 59)}.")


def _recipe(r: random.Random) -> str:
    ing = ["flour", "butter", "sugar", "eggs", "milk", "onions", "garlic", "rice", "lentils", "tomatoes", "spinach", "cream"]
    a, b, c = r.sample(ing, 3)
    return (f"{r.choice(['Simple', 'Classic', 'Quick', 'Rustic', 'Weeknight'])} {r.choice(['lentil soup', 'apple cake', 'risotto', 'tomato tart', 'omelette', 'curry'])}. "
            f"Preheat the oven to {r.choice([160, 180, 200, 220])}°C. Whisk {r.randint(50, 500)} g of {a} with {r.randint(1, 4)} tablespoons of {b}, "
            f"then fold in {r.randint(100, 400)} ml of {c}. {r.choice(['Season with salt and pepper.', 'Stir gently.', 'Leave to rest.'])} "
            f"Bake for {r.randint(10, 60)} minutes until golden, {r.choice(['stirring once halfway', 'turning the tray', 'covering with foil'])}. "
            f"Serves {r.randint(2, 8)}. Keeps for {r.randint(1, 4)} days in the fridge.")


def _football(r: random.Random) -> str:
    h, a = r.sample(TEAMS, 2)
    return (f"{h} beat {a} {r.randint(1, 5)}-{r.randint(0, 1)} at home on {r.choice(DAYS)}. {r.choice(NAMES)} opened the scoring in minute "
            f"{r.randint(2, 44)} with a {r.choice(['header', 'low drive', 'penalty', 'volley', 'free kick'])}, and {r.choice(NAMES)} "
            f"doubled the lead after the break. {a} had {r.randint(30, 60)}% of possession but only {r.randint(1, 5)} shots on target. "
            f"The manager said the {r.choice(['defence', 'midfield', 'squad'])} was {r.choice(['outstanding', 'disciplined', 'tired but resilient'])}. "
            f"{h} move up to {r.randint(1, 20)}th in the table.")


def _code(r: random.Random) -> str:
    f, x, y = r.choice(["total", "parse", "merge", "clamp", "window", "scale"]), r.choice(["items", "rows", "values"]), r.choice(["limit", "size", "step"])
    return (f"def {f}_{x}({x}, {y}={r.randint(1, 64)}):\n    \"\"\"Return the {f} of {x}, {r.choice(['in order', 'ignoring None', 'as a list'])}.\"\"\"\n"
            f"    out = []\n    for i, v in enumerate({x}):\n        if v is None or i >= {y}:\n            {r.choice(['continue', 'break'])}\n"
            f"        out.append(v {r.choice(['*', '+', '-', '//'])} {r.randint(2, 9)})\n    return {r.choice(['sum(out)', 'out', 'sorted(out)', 'max(out, default=0)'])}\n")


def _legal(r: random.Random) -> str:
    p1, p2 = r.sample(["Licensee", "Licensor", "Supplier", "Customer", "Contractor", "Tenant", "Landlord"], 2)
    return (f"{r.randint(1, 20)}.{r.randint(1, 9)} The {p1} shall not {r.choice(['assign', 'sublicense', 'transfer', 'disclose'])} any "
            f"{r.choice(['rights', 'obligations', 'confidential information', 'deliverables'])} under this Agreement without the prior written "
            f"consent of the {p2}, such consent not to be unreasonably withheld. Any notice under this clause shall be given in writing "
            f"within {r.randint(5, 90)} days and shall take effect on {r.choice(['receipt', 'the next business day', 'delivery'])}. "
            f"This clause survives termination for a period of {r.randint(1, 7)} years.")


def _market(r: random.Random) -> str:
    return (f"Shares of {r.choice(COMPANIES)} {r.choice(['rose', 'fell', 'jumped', 'slid'])} {r.uniform(0.5, 12):.1f}% to ${r.uniform(5, 400):.2f} "
            f"on {r.choice(DAYS)} after the company reported quarterly revenue of ${r.uniform(0.2, 40):.1f} billion, "
            f"{r.choice(['above', 'below', 'in line with'])} analysts' estimates. Operating margin was {r.randint(3, 35)}%. "
            f"The board {r.choice(['raised its dividend', 'announced a buyback', 'cut its outlook', 'kept guidance unchanged'])}. "
            f"Trading volume was {r.randint(2, 9)} times the daily average.")


SOURCES = {"weather": _weather, "recipes": _recipe, "football": _football, "code": _code, "legal": _legal, "markets": _market}


def make_sources(per_source: int = 60, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    return [{"id": f"{name}-{i}", "source": name, "text": fn(rng)} for name, fn in SOURCES.items() for i in range(per_source)]


# ---------------------------------------------------------------------------------------------

FILES = {"pages.jsonl.gz": make_pages, "sources.jsonl.gz": make_sources}


def jsonl(records: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def write(out_dir: Path = HERE) -> list[Path]:
    paths = []
    for name, make in FILES.items():
        buf = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:  # no name, no time: same bytes each run
            gz.write(jsonl(make()))
        path = Path(out_dir) / name
        path.write_bytes(buf.getvalue())
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write():
        print(f"{p}: {p.stat().st_size:,} bytes")
