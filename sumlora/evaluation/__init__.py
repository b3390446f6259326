"""The evaluate stage's library: ROUGE against several references (``rouge``), the numbers with paired
bootstrap intervals (``scores``), and what people read (``report``: Markdown report, bar chart)."""
