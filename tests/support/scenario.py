"""The seed scenario's questions (seed 004), asked in this order in one session."""

from __future__ import annotations

SEED = [
    "현재 클러스터 가동율 알려줘?",
    "리소스를 많이 사용하는 spark 잡 3개 추출해줘?",
    "클러스터 가동율이 높을때 어떻게 해야되?",
    "이 중에서 상위 2개 spark 잡 Kill 해줘?",
    "클러스터 사용율이 떨어졌는지 확인해줘?",
]
