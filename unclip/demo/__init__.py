"""The offline demo: a procedural shapes dataset unclip can train on, a pixel checker, and its benchmark.

    unclip data shapes data/shapes --n 20000 --workers 8        # imagefolder: PNGs + metadata.jsonl
    unclip eval shapes --model runs/demo/model.yaml --out eval/  # accuracy per attribute, held-out combinations

``unclip.demo.shapes`` draws and captions the images, ``unclip.demo.checker`` reads the attributes back from
pixels, ``unclip.demo.eval`` generates the held-out prompts with a cascade and scores them.
"""
