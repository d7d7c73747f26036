"""Figures for runs and lessons, built with `matplotlib.figure.Figure`, never pyplot, so that drawing one changes
no global matplotlib state (backend, open figures). matplotlib is imported when the first figure is drawn, so the
command lines (`--help`, argument errors) start without it."""


def new_figure(nrows: int = 1, ncols: int = 1, figsize=(7, 4.5)):
    """(figure, axes) of a figure that belongs to no pyplot state."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize)
    return figure, figure.subplots(nrows, ncols)


def save_figure(figure, path: str, tight_layout: bool = True) -> None:
    if tight_layout:
        figure.tight_layout()
    figure.savefig(path, dpi=110)


def save_plot(figure, path: str, *all_axes) -> None:
    """Grid and legend on each of `all_axes`, then save the figure to `path`."""
    for axes in all_axes:
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend()
    save_figure(figure, path)
