"""Where the pretrained frozen networks come from (``teachers.yml``): published name, page, preset, converter."""
import os

import yaml

MANIFEST_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'teachers.yml')


def load_manifest(path=None):
    """``{expected local path: entry}`` of ``path`` (default: ``MANIFEST_FILE``); empty when the file is absent."""
    path = path or MANIFEST_FILE
    if not os.path.isfile(path):
        return {}
    with open(path, encoding='utf-8') as f:
        return yaml.safe_load(f) or {}


def find_entry(load_path, manifest=None):
    """The manifest entry of ``load_path``: the same path, or else the same file name; None if not listed."""
    manifest = load_manifest() if manifest is None else manifest
    normalized = os.path.normpath(load_path)
    for path, entry in manifest.items():
        if os.path.normpath(path) == normalized:
            return path, entry
    for path, entry in manifest.items():
        if os.path.basename(path) == os.path.basename(normalized):
            return path, entry
    return None


def convert_command(path, entry):
    """The command that converts the published file into ``path``, or None if it loads as published."""
    if not entry.get('converter'):
        return None
    published = os.path.basename(entry['published_name'].split(' ')[0])
    return (f'python -m datasets_prep.convert_checkpoint {entry["converter"]} {published} {path} '
            f'--preset {entry["preset"]}')


def describe(load_path, manifest=None):
    """One sentence for a missing ``load_path``: what to download, from where, and how to convert it; None if the
    manifest does not list it."""
    found = find_entry(load_path, manifest)
    if found is None:
        return None
    entry = found[1]
    text = f'It is published as {entry["published_name"]} at {entry["published_at"]} (network: preset {entry["preset"]}'
    command = convert_command(load_path, entry)
    return text + (f'); convert it with: {command}' if command else '); put it there as it is.')
