"""MiPKD's feature prior mixer (Li et al., ICLR 2025): encoders into a shared latent space, decoders out of it."""
import torch
from torch import nn
from basicsr.utils.registry import ARCH_REGISTRY


def conv_stack(c_in, c_out, hidden, num_layers, kernel_size):
    """``num_layers`` convolutions c_in -> hidden -> ... -> c_out with PReLU between them, 'same' padding."""
    widths = [c_in] + [hidden] * (num_layers - 1) + [c_out]
    layers = []
    for index, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        if index:
            layers.append(nn.PReLU(a))
        layers.append(nn.Conv2d(a, b, kernel_size, padding=kernel_size // 2))
    return nn.Sequential(*layers)


@ARCH_REGISTRY.register()
class KDPriorMixer(nn.Module):
    """The trainable encoders and decoders of MiPKD's feature prior mixer, one set per distillation position k.

    At position k the teacher's feature F_T and the student's F_S are encoded by separate CNN encoders into one
    latent space of ``latent_channels`` channels (MiPKD Tab. 6-7: separate CNN encoders are best), Z_T = E_T(F_T),
    Z_S = E_S(F_S); a 3D mask I (one value per latent channel and position, drawn by the model) mixes them,
    Z = I ⊙ Z_S + (1 − I) ⊙ Z_T (I = 1 takes the student's element); the decoders map Z back into the teacher's
    feature space (D_T, the feature the loss compares with F_T and that feeds the teacher's next block) and into the
    student's (D_S, the feature that feeds the student's next block in the block prior mixer). D_T(Z_T) is the
    teacher auto-encoder's reconstruction (MiPKD Tab. 8, the auxiliary auto-encoder loss).

    Layout (the paper gives none, its reviewers asked; our choice): each encoder and decoder is ``num_layers``
    convolutions of ``kernel_size`` with PReLU between them, hidden width ``latent_channels``.

    Args:
        student_channels (list[int]): The student's channels at each position (its ``train.feature_taps``).
        teacher_channels (list[int]): The teacher's channels at each position.
        latent_channels (int): Channels of the shared latent space. Default: 64.
        num_layers (int): Convolutions per encoder and per decoder. Default: 2.
        kernel_size (int): Their kernel size (odd). Default: 3.

    Example::

        network_mixer: {type: KDPriorMixer, student_channels: [60, 60], teacher_channels: [180, 180],
                        latent_channels: 64, num_layers: 2, kernel_size: 3}
    """

    def __init__(self, student_channels, teacher_channels, latent_channels=64, num_layers=2, kernel_size=3):
        super().__init__()
        if len(student_channels) != len(teacher_channels) or not student_channels:
            raise ValueError(f'KDPriorMixer: student_channels {student_channels} and teacher_channels '
                             f'{teacher_channels} must list the same positions (at least one)')
        if num_layers < 1 or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f'KDPriorMixer: num_layers ({num_layers}) must be at least 1 and kernel_size '
                             f'({kernel_size}) odd')
        self.student_channels = list(student_channels)
        self.teacher_channels = list(teacher_channels)
        self.latent_channels = latent_channels

        def stacks(sources, targets):
            return nn.ModuleList(conv_stack(a, b, latent_channels, num_layers, kernel_size)
                                 for a, b in zip(sources, targets))

        latent = [latent_channels] * len(student_channels)
        self.encoders_s = stacks(student_channels, latent)
        self.encoders_t = stacks(teacher_channels, latent)
        self.decoders_t = stacks(latent, teacher_channels)
        self.decoders_s = stacks(latent, student_channels)

    def forward(self, student_features, teacher_features, masks):
        """All positions in one call (one DDP forward per step).

        Args:
            student_features (list[Tensor]): F_S per position, (B, C_S, H, W).
            teacher_features (list[Tensor]): F_T per position, (B, C_T, H, W).
            masks (list[Tensor]): I per position, (B, latent_channels, H, W), 1 where the student's latent is taken.

        Returns:
            tuple[list[Tensor]]: (D_T(Z), the mixed feature in the teacher's space; D_S(Z), in the student's space;
            D_T(Z_T), the teacher auto-encoder's reconstruction), one tensor per position each.
        """
        count = len(self.encoders_s)
        if not len(student_features) == len(teacher_features) == len(masks) == count:
            raise ValueError(f'KDPriorMixer: expected {count} student features, teacher features and masks (one per '
                             f'position), got {len(student_features)}, {len(teacher_features)}, {len(masks)}')
        mixed_t, mixed_s, reconstructed = [], [], []
        for k in range(count):
            z_s = self.encoders_s[k](student_features[k])
            z_t = self.encoders_t[k](teacher_features[k])
            z = torch.where(masks[k].bool(), z_s, z_t)
            both = self.decoders_t[k](torch.cat([z, z_t]))  # D_T(Z) and D_T(Z_T) in one call
            mixed_t.append(both[:z.shape[0]])
            reconstructed.append(both[z.shape[0]:])
            mixed_s.append(self.decoders_s[k](z))
        return mixed_t, mixed_s, reconstructed
