"""The stability map: cells, the terminal table, heatmap layout and figures, the map's files."""
