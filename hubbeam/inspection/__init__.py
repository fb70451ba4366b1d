"""Looking at a finished embedding run: nearest-neighbour search and an HTML report.

    shards   stream a run's embedding shards (only the columns asked for) and keep a running top-k
    lookup   the text (or image) behind a row: a pass-through column, else the source file, read lazily
    search   `hubbeam.search(…)` / `hubbeam search`: a query embedded with the run's own module
    searcher `hubbeam.Searcher(dirs, module)`: many queries, module and index (hubbeam.index) loaded once
    report   `hubbeam.write_report(…)` / `hubbeam report`: one self-contained HTML file

Nothing here is imported by `import hubbeam`; TensorFlow is only loaded to embed a search query.
"""
