import pytest

from shared.errors import ConfigError
from shared.skill import Demo, Skill, default_skill, load_skill, save_skill, skill_from_bytes


def test_default_skill_renders_a_fixed_prefix():
    skill = default_skill()
    assert skill.version == 0 and skill.demos
    prompt = skill.prompt("A dog sleeps.")
    assert prompt.startswith(skill.prompt_prefix())
    assert prompt.endswith("Scene: A dog sleeps.\nAnswer:")


def test_round_trip_and_hash(tmp_path):
    skill = Skill(version=2, instructions="Describe.", demos=(Demo(input="a", answer="Answer: a"),))
    path = tmp_path / "s.json"
    save_skill(skill, path)
    back = load_skill(path)
    assert back == skill and back.sha256 == skill.sha256


def test_bad_skill_names_the_key():
    with pytest.raises(ConfigError) as info:
        skill_from_bytes(b"instructions: ''\nversion: -1\n")
    paths = {p for p, _, _ in info.value.problems}
    assert {"instructions", "version"} <= paths
