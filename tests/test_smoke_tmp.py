import json
def test_trained(trained_run):
    s = json.loads((trained_run / "summary.json").read_text())
    print(s["status"], s.get("test"), s["split_sizes"])
    assert s["status"] == "completed"
