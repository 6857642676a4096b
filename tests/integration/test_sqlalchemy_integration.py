"""SQLAlchemy's async engine (asyncpg driver, greenlet bridge) against a real PostgreSQL.

The ORM and Core over ``create_async_engine("postgresql+asyncpg://...")``: DDL through
``run_sync``, inserts with relationships, eager and lazy (``AsyncAttrs``) loading, a rolled-back
transaction, a bounded connection pool shared by concurrent sessions, a server-side cursor
streamed with ``stream_scalars``. Each loop works in its own schema.

No ``from __future__ import annotations``: the mapped classes are local to the test and
SQLAlchemy reads their annotations at run time.
"""

import asyncio
from typing import Any

from _support import import_or_skip

import_or_skip("sqlalchemy")
import_or_skip("greenlet")
import_or_skip("asyncpg")

from sqlalchemy import ForeignKey, String, func, select, text  # noqa: E402
from sqlalchemy.exc import IntegrityError  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncAttrs, async_sessionmaker, create_async_engine  # noqa: E402
from sqlalchemy.orm import (  # noqa: E402
    DeclarativeBase,
    Mapped,
    mapped_column,
    relationship,
    selectinload,
)


def test_sqlalchemy_async_orm(run: Any, pg_url: str, loop_name: str) -> None:
    schema = f"it_sa_{loop_name}"
    url = pg_url.replace("postgresql://", "postgresql+asyncpg://", 1)

    class Base(AsyncAttrs, DeclarativeBase):
        pass

    class Author(Base):
        __tablename__ = "authors"
        __table_args__ = {"schema": schema}
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(String(100), unique=True)
        books: Mapped[list["Book"]] = relationship(back_populates="author")

    class Book(Base):
        __tablename__ = "books"
        __table_args__ = {"schema": schema}
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str] = mapped_column(String(200))
        pages: Mapped[int]
        author_id: Mapped[int] = mapped_column(ForeignKey(f"{schema}.authors.id"))
        author: Mapped["Author"] = relationship(back_populates="books")

    async def scenario() -> dict[str, Any]:
        engine = create_async_engine(url, pool_size=3, max_overflow=0, pool_timeout=10)
        try:
            async with engine.begin() as conn:
                await conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
                await conn.execute(text(f"CREATE SCHEMA {schema}"))
                await conn.run_sync(Base.metadata.create_all)
            Session = async_sessionmaker(engine, expire_on_commit=False)

            async with Session() as session, session.begin():
                for a in range(5):
                    author = Author(name=f"author {a}")
                    author.books = [
                        Book(title=f"book {a}.{b}", pages=100 + 10 * a + b) for b in range(a + 1)
                    ]
                    session.add(author)

            # Eager loading and lazy loading through AsyncAttrs.
            async with Session() as session:
                authors = (
                    await session.scalars(
                        select(Author).options(selectinload(Author.books)).order_by(Author.id)
                    )
                ).all()
                catalogue = {a.name: sorted(b.title for b in a.books) for a in authors}
                book = await session.scalar(select(Book).where(Book.title == "book 3.2"))
                lazy_author = (await book.awaitable_attrs.author).name

            # A failed transaction (unique violation) rolls back everything it did.
            try:
                async with Session() as session, session.begin():
                    session.add(Author(name="author 9"))
                    session.add(Author(name="author 0"))
            except IntegrityError as exc:
                violation = type(exc.orig).__name__
            async with Session() as session:
                author_count = await session.scalar(select(func.count(Author.id)))

            # Connection pool: 20 sessions at once share 3 connections.
            peak = 0

            async def reader(i: int) -> int:
                nonlocal peak
                async with Session() as session:
                    await session.execute(text("SELECT pg_sleep(0.01)"))
                    peak = max(peak, engine.pool.checkedout())
                    return await session.scalar(
                        select(func.sum(Book.pages))
                        .join(Author)
                        .where(Author.name == f"author {i % 5}")
                    )

            sums = await asyncio.gather(*(reader(i) for i in range(20)))

            # Streaming a result through a server-side cursor, updating in a transaction.
            async with Session() as session:
                streamed = [
                    b.title
                    async for b in await session.stream_scalars(
                        select(Book).order_by(Book.id).execution_options(yield_per=4)
                    )
                ]
            async with Session() as session:
                async with session.begin():
                    updated = await session.execute(
                        Book.__table__.update().where(Book.pages > 140).values(pages=0)
                    )
                total_pages = await session.scalar(select(func.sum(Book.pages)))
            return {
                "catalogue": catalogue,
                "lazy_author": lazy_author,
                "violation": violation,
                "author_count": author_count,
                "sums": sums,
                "pool_peak_ok": 1 <= peak <= 3,
                "streamed": streamed,
                "updated": updated.rowcount,
                "total_pages": total_pages,
            }
        finally:
            await engine.dispose()

    result = run(scenario)
    assert result["catalogue"]["author 2"] == ["book 2.0", "book 2.1", "book 2.2"]
    assert result["lazy_author"] == "author 3"
    assert result["violation"] == "UniqueViolationError"
    assert result["author_count"] == 5
    assert result["sums"][:5] == [100, 221, 363, 526, 710]
    assert result["pool_peak_ok"] is True
    assert len(result["streamed"]) == 15
