"""Table rendering shared by the brain, the studies and the app (`util.tables`)."""

from speechbrain_memristor.util.tables import csv_table, markdown_table, setting_text


def test_settings_keep_their_small_values():
    values = (None, 0.001, 0.01, 0.5, 4, "off")
    assert [setting_text(v) for v in values] == ["ideal", "0.001", "0.01", "0.5", "4", "off"]


def test_markdown_and_csv_tables():
    assert markdown_table(["a", "b"], [[1, "x"]]) == "| a | b |\n| --- | --- |\n| 1 | x |\n"
    assert csv_table(["a", "b"], [[1, "x,y"]]) == 'a,b\n1,"x,y"\n'
