"""Figures of the demo comparison (``basicsr_kd.demo_compare``): the paired gains as bars with their spread, and the
validation crop where the students differ most, with each output's |error| against the ground truth."""
import statistics
import textwrap

import matplotlib
import numpy as np

matplotlib.use('Agg')  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402  (after the backend)

CROP = 40  # side of the crop in output pixels


def gains_plot(tasks, arms, metrics, seeds, labels, path):
    """Per task, each student's PSNR gain over its scratch run paired by seed: bar = mean, whisker = standard
    deviation, dots = seeds. ``arms[task]`` = (scratch key, [(key, label)]); ``metrics[task][key, seed]`` = (PSNR,
    SSIM)."""
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 0.5 + 0.4 * max(len(arms[t][1]) for t in tasks)),
                             squeeze=False)
    for ax, task in zip(axes[0], tasks):
        scratch, students = arms[task]
        gains = [[metrics[task][key, s][0] - metrics[task][scratch, s][0] for s in seeds] for key, _ in students]
        rows = np.arange(len(students))[::-1]
        means = [statistics.mean(g) for g in gains]
        spreads = [statistics.stdev(g) if len(g) > 1 else 0 for g in gains]
        ax.barh(rows, means, xerr=spreads, color=['tab:blue' if m >= 0 else 'tab:red' for m in means], alpha=0.7,
                capsize=3)
        for row, g in zip(rows, gains):
            ax.plot(g, [row] * len(g), 'k.', markersize=4)
        ax.axvline(0, color='k', linewidth=0.8)
        ax.set_yticks(rows, [label for _, label in students])
        ax.set_xlabel('PSNR gain over scratch, paired by seed (dB; Y for SR, RGB for denoising)')
        ax.set_title(labels[task])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def disagreement_crop(outputs, gts, size):
    """(image index, top, left) of the ``size`` x ``size`` window where the outputs' |error| maps differ most (the
    standard deviation over outputs of the per-pixel error, summed over the window)."""
    best = (-1., 0, 0, 0)
    for index, gt in enumerate(gts):
        errors = np.stack([np.abs(out[index].astype(np.float32) - gt).mean(-1) for out in outputs])
        spread = errors.std(0)
        window = np.cumsum(np.cumsum(np.pad(spread, ((1, 0), (1, 0))), 0), 1)  # summed-area table
        sums = window[size:, size:] - window[:-size, size:] - window[size:, :-size] + window[:-size, :-size]
        top, left = np.unravel_index(np.argmax(sums), sums.shape)
        if sums[top, left] > best[0]:
            best = (sums[top, left], index, int(top), int(left))
    return best[1:]


def crops_picture(panels, gts, image_names, title, path, size=CROP):
    """Each panel (label, outputs per validation image; the first are the references) at the crop where the
    non-reference outputs differ most: the crop above, |error| against the ground truth below (one colour scale)."""
    index, top, left = disagreement_crop([out for label, out, is_student in panels if is_student], gts, size)

    def crop(img):
        return img[top:top + size, left:left + size]

    gt = crop(gts[index]).astype(np.float32)
    errors = [np.abs(crop(out[index]).astype(np.float32) - gt).mean(-1) for _, out, _ in panels]
    vmax = max(np.percentile(np.concatenate([e.ravel() for e in errors]), 99), 1.)
    columns = min(len(panels) + 1, 8)
    rows = -(-(len(panels) + 1) // columns)
    fig, axes = plt.subplots(2 * rows, columns, figsize=(1.5 * columns + 1, 3.3 * rows + 1.4), squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.9, bottom=0.02, top=1 - 1.4 / (3.3 * rows + 1.4), wspace=0.06, hspace=0.3)
    for ax in axes.ravel():
        ax.axis('off')
    cells = [('GT', gts[index], None)] + [(label, out[index], err) for (label, out, _), err in zip(panels, errors)]
    for number, (label, image, error) in enumerate(cells):
        row, column = 2 * (number // columns), number % columns
        axes[row, column].imshow(crop(image)[..., ::-1], interpolation='nearest')
        if error is not None:
            psnr = 10 * np.log10(255. ** 2 / max(np.mean((crop(image).astype(np.float32) - gt) ** 2), 1e-10))
            label = f'{textwrap.fill(label, 14)}\n{psnr:.2f} dB'
            shown = axes[row + 1, column].imshow(error, cmap='inferno', vmin=0, vmax=vmax, interpolation='nearest')
        axes[row, column].set_title(label, fontsize=8)
    fig.colorbar(shown, cax=fig.add_axes([0.92, 0.3, 0.015, 0.4]), label='|error| (grey levels, RGB mean)')
    fig.suptitle(f'{title}: {image_names[index]}, {size}×{size} crop at ({top}, {left}) where the students differ '
                 f'most;\nseed-0 students, PSNR (RGB) of the crop', fontsize=9, y=0.995)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return image_names[index], top, left
