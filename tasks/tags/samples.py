"""Bundled English and Japanese texts: what the demo tags and what the tests batch together."""

from __future__ import annotations

from math import gcd

ENGLISH = (
    "Machine learning models need clean data pipelines and careful evaluation of features.",
    "The central bank raised interest rates to fight inflation, surprising bond markets.",
    "Volcanic eruptions release ash clouds that ground flights across northern Europe.",
    "A new vaccine trial showed strong immune responses in elderly patients.",
    "Electric vehicle sales grew as battery prices fell and charging networks expanded.",
    "The football club signed a young striker after a record transfer fee.",
    "Researchers sequenced the genome of an ancient wheat variety found in Egypt.",
    "Cloud providers cut storage prices while demand for GPU clusters keeps rising.",
    "The orchestra performed a rarely heard symphony by a forgotten Czech composer.",
    "Heavy rainfall caused river flooding and landslides in mountain villages.",
    "The startup raised venture capital to build open source database tooling.",
    "Astronomers detected water vapour in the atmosphere of a distant exoplanet.",
    "Coffee farmers struggle with drought and falling prices on commodity exchanges.",
    "The museum opened an exhibition of Renaissance paintings and sculptures.",
    "Cybersecurity teams patched a critical vulnerability in the web server software.",
    "Marathon runners trained at high altitude to improve their endurance.",
    "The city council approved a plan for new bicycle lanes and public transport.",
    "Quantum computers use qubits that can hold superposition states.",
    "Honey bees pollinate crops, but pesticides threaten their colonies.",
    "The novel follows a detective investigating a murder in Victorian London.",
    "Solar panels on rooftops reduce household electricity bills in sunny regions.",
    "The chess grandmaster won the tournament with a daring queen sacrifice.",
    "Deep sea divers explored a shipwreck full of porcelain from the Ming dynasty.",
    "Supply chain delays left retailers short of semiconductors and toys.",
)

JAPANESE = (
    "東京大学の研究チームは、自然言語処理の新しい手法を発表しました。",
    "日本銀行は物価上昇を抑えるために金利を引き上げると発表した。",
    "富士山の登山シーズンが始まり、多くの観光客が山頂を目指している。",
    "新型ワクチンの臨床試験で高齢者に強い免疫反応が確認された。",
    "電気自動車の販売台数は電池価格の低下とともに増加している。",
    "プロ野球の優勝チームが決まり、ファンは球場で喜びを分かち合った。",
    "人工知能を活用した医療画像診断システムが病院に導入された。",
    "大雨による河川の氾濫で、山間部の村に避難指示が出された。",
    "京都の寺院では秋の紅葉を見るために多くの参拝者が訪れている。",
    "半導体不足の影響で自動車メーカーの生産計画が遅れている。",
    "宇宙航空研究開発機構は小惑星探査機の打ち上げに成功した。",
    "地方の農家は高齢化と後継者不足という深刻な問題に直面している。",
)


def documents(count: int, pool: tuple[str, ...] = ENGLISH) -> list[str]:
    """``count`` distinct documents, each two sentences of ``pool`` (enough for 500+)."""
    size = len(pool)
    pairs = [(i, j) for i in range(size) for j in range(size) if i != j]
    if count > len(pairs):
        raise ValueError(f"at most {len(pairs)} distinct documents from {size} sentences")
    # a step coprime with the pair count visits every pair once, spreading topics out
    step = next(s for s in (7, 11, 13, 1) if gcd(s, len(pairs)) == 1)
    picked = [pairs[(k * step) % len(pairs)] for k in range(count)]
    joiner = "" if pool is JAPANESE else " "
    return [pool[i] + joiner + pool[j] for i, j in picked]
